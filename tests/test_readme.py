"""The README's commands and Python example, run as written at tiny size, so the README cannot drift.

How a README ``bash`` block becomes what this test runs:

* lines are joined at ``\\`` continuations; ``#`` comments and blank lines are dropped;
* ``pip install ... &&`` prefixes are not run (CI runs them: ``.ci/run`` must contain the README's
  test command verbatim, checked below); ``python -m pytest`` is this suite itself and is not run;
* a command with a placeholder (``<...>``, ``ADM-IP.pt``, ``OUTPUT_DIR``) is not run: its flags are
  parsed by the sampling parser instead (the paper's command needs the official checkpoint);
* only sizes change, by this rule: ``--num_samples N`` and ``--batch_size N`` become 4, ``--limit N``
  becomes 8, ``--rungs LIST`` becomes 8;
* the commands run in order in one empty folder that links ``scripts/``, ``datasets/`` and
  ``evaluations/`` from the repository, so ``data/``, ``out/`` and ``runs/`` are made fresh.
"""

import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
SIZE_RULE = {"--num_samples": "4", "--batch_size": "4", "--limit": "8", "--rungs": "8"}
PLACEHOLDERS = ("<", "ADM-IP.pt", "OUTPUT_DIR")


def _blocks(lang):
    """The contents of the README's fenced blocks whose info string is ``lang`` ("" = a plain fence)."""
    blocks, current, info = [], None, None
    for line in open(README).read().splitlines():
        if line.startswith("```"):
            if current is None:
                current, info = [], line[3:].strip()
            else:
                if info == lang:
                    blocks.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def _commands(block):
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def readme_commands():
    """Every README bash command, after dropping the pip prefix (see the module docstring)."""
    out = []
    for block in _blocks("bash"):
        for line in _commands(block):
            parts = [p.strip() for p in line.split("&&")]
            while parts and parts[0].startswith("pip install"):
                parts.pop(0)
            out.extend(parts)
    return out


def shrink(argv):
    """The size rule: only the values of the flags in :data:`SIZE_RULE` change."""
    argv = list(argv)
    for i, a in enumerate(argv[:-1]):
        if a in SIZE_RULE:
            argv[i + 1] = SIZE_RULE[a]
    return argv


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_ci_runs_the_readme_test_command():
    setup = [line for b in _blocks("bash") for line in _commands(b) if line.endswith("python -m pytest")]
    assert len(setup) == 1, setup
    assert setup[0] in open(os.path.join(ROOT, ".ci", "run")).read()


def test_commands_with_placeholders_parse():
    from guided_diffusion.jobs.sample import sampling_parser

    paper = [c for c in readme_commands() if "ADM-IP.pt" in c]
    assert len(paper) == 1
    argv = shlex.split(paper[0])
    assert argv[:2] == ["python", "scripts/image_sample_1gpu.py"]
    args = sampling_parser().parse_args(argv[2:])
    assert (args.window, args.cutoff, args.timestep_respacing, args.num_samples) == (80, 300, "ddim5", 50000)


def test_readme_quick_start_runs_as_written(tmp_path):
    for name in ("scripts", "datasets", "evaluations"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    runnable = [c for c in readme_commands()
                if c != "python -m pytest" and not any(p in c for p in PLACEHOLDERS)]
    assert runnable, "no README command found"
    outputs = {}
    for command in runnable:
        argv = shrink(shlex.split(command))
        assert argv[0] == "python", command
        res = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=_env(), capture_output=True,
                             text=True, timeout=300)
        assert res.returncode == 0, f"{command}\n{res.stderr[-2000:]}"
        outputs[argv[1]] = outputs.get(argv[1], "") + res.stdout
    # the demo's printed lines are the README's output block
    printed = [line for line in outputs["scripts/image_sample_1gpu.py"].splitlines() if line.startswith("wrote ")]
    shown = [b for b in _blocks("") if b.lstrip().startswith("wrote ")]
    assert len(shown) == 1 and printed == shown[0].strip().splitlines()
    assert (tmp_path / "out" / "ddim_vs_tsddim.png").exists()
    # the evaluation printed FID, precision and KID (precision/recall from the stored pool_3 features)
    scores = outputs["evaluations/evaluator.py"]
    assert re.search(r"^FID: [0-9.]+", scores, re.M) and re.search(r"^Precision: [0-9.]+", scores, re.M), scores
    assert "KID x10^3: " in scores and "Precision: not computed" not in scores


def test_readme_python_example_runs(tmp_path):
    (example,) = _blocks("python")
    res = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    expected = example.strip().splitlines()[-1].split("# ", 1)[1].strip()
    assert res.stdout.strip() == expected


def test_demo_command_uses_the_demo_presets():
    """The README's demo command is the one guided_diffusion.demo builds from DEMO_TS_PRESETS."""
    from guided_diffusion.demo import demo_command

    demo = [c for c in readme_commands() if c.startswith("python scripts/image_sample_1gpu.py")
            and "ADM-IP.pt" not in c]
    assert demo == ["python scripts/image_sample_1gpu.py " + shlex.join(demo_command(10))]


@pytest.mark.parametrize("flag, value", [("--num_samples", "64"), ("--limit", "500"), ("--rungs", "64,256")])
def test_shrink_changes_only_sizes(flag, value):
    assert shrink(["python", "x.py", flag, value, "--window", "10"]) == [
        "python", "x.py", flag, SIZE_RULE[flag], "--window", "10"]


def test_readme_states_the_demo_presets():
    from guided_diffusion.demo import DEMO_TS_PRESETS

    text = " ".join(open(README).read().split())
    for steps, (window, cutoff) in DEMO_TS_PRESETS.items():
        assert f"{window} at {steps} steps" in text, (steps, window)
        assert f"cutoff {cutoff}" in text
