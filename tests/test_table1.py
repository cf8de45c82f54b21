"""docs/table1.md: every command parses, and the 5-step column runs end to end at tiny size (a random
UNet2DModel of the DDPM family saved as a diffusers folder, 2 samples, 2-3 steps)."""

import os
import re
import shlex

import numpy as np
import pytest

import diffusers  # noqa: E402 (in requirements-cpu.txt)

from test_diffusers import tiny_unet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "mpiexec -n 8 python scripts/image_sample.py "


def table_commands():
    """[(row title, steps, argv)] of the cells of docs/table1.md."""
    text = open(os.path.join(ROOT, "docs", "table1.md")).read()
    out, title = [], None
    for line in text.splitlines():
        if line.startswith("### "):
            title = line[4:]
        m = re.match(r"\| (\d+) \| [\d.]+ \| `(.*)` \|$", line)
        if m:
            assert m.group(2).startswith(PREFIX), m.group(2)
            out.append((title, int(m.group(1)), shlex.split(m.group(2)[len(PREFIX):])))
    return out


def _set(argv, flag, value):
    i = argv.index(flag)
    return argv[:i + 1] + [value] + argv[i + 2:]


def test_every_cell_has_a_command_or_says_why():
    cells = table_commands()
    assert len(cells) == 10 * 5 - 4  # 10 rows x 5 step counts, less the 4 quadratic cells at 50 / 100 steps
    for title, steps, argv in cells:
        respacing = argv[argv.index("--timestep_respacing") + 1]
        assert respacing.endswith(str(steps)) and ("TS-" in title) == ("--do_time_shift" in argv)


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory):
    """A random UNet2DModel folder with google/ddpm-cifar10-32's scheduler settings (32 x 32 RGB)."""
    path = tmp_path_factory.mktemp("ddpm") / "ddpm-cifar10-32"
    tiny_unet(seed=1, sample_size=32).save_pretrained(str(path))
    diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                            variance_type="fixed_large", clip_sample=True).save_pretrained(str(path))
    return str(path)


@pytest.mark.parametrize("cell", [c for c in table_commands() if c[1] == 5], ids=lambda c: c[0])
def test_five_step_column_runs_at_tiny_size(cell, cifar_like, tmp_path):
    from guided_diffusion.jobs.sample import parse_sampling_flags, run_sampling

    title, _, argv = cell
    argv = _set(_set(_set(_set(argv, "--model_path", cifar_like), "--num_samples", "2"), "--batch_size", "2"),
                "--out_dir", str(tmp_path))
    respacing = argv[argv.index("--timestep_respacing") + 1]
    argv = _set(argv, "--timestep_respacing", re.sub(r"\d+$", "3" if respacing.startswith("pndm") else "2", respacing))
    job, _ = parse_sampling_flags(argv + ["--progress", "False"])
    path = run_sampling(job, device="cpu")
    with np.load(path) as z:
        assert z["arr_0"].shape == (2, 32, 32, 3)
    assert os.path.basename(path).startswith("ddpm_cifar10_")
