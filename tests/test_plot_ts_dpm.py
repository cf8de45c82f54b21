"""tools/plot_ts_dpm.py: draws the four-panel figure from the demo model; bad flags: one line, exit 2, no file."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "plot_ts_dpm.py")


def run(tmp_path, *flags):
    return subprocess.run([sys.executable, SCRIPT, "--num_samples", "3", "--timestep_respacing", "ddim5", *flags],
                          capture_output=True, text=True, cwd=tmp_path)


def test_draws_the_figure(tmp_path):
    from PIL import Image

    out = tmp_path / "fig.png"
    proc = run(tmp_path, "--out", str(out), "--window", "20", "--cutoff", "300", "--zoom_step", "1")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    width, height = Image.open(out).size
    assert width > 3 * height  # four panels in a row


def test_bad_flags_one_line_no_file(tmp_path):
    import runpy

    import pytest

    out = tmp_path / "fig.png"
    proc = run(tmp_path, "--out", str(out), "--ts_rule", "pndm")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--ts_rule pndm" in proc.stderr
    main = runpy.run_path(SCRIPT)["main"]
    base = ["--num_samples", "2", "--timestep_respacing", "ddim5", "--out", str(out)]
    for flags, expect in ((["--zoom_step", "9"], "--zoom_step 9"), (["--cutoff", "990"], "no step is shifted")):
        with pytest.raises(ValueError, match=expect):
            main(base + flags)
        assert not out.exists()
