"""Helpers the test files share (``from helpers import ...``; pytest puts tests/ on the import path).

Fixtures live in conftest.py (``one_thread``, ``tiny_checkpoint``, ``analytic_model``).
"""

import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_AFTER_PARTS = os.path.join(ROOT, "tests", "tools", "exit_after_parts.py")


def argv_of(values):
    """{flag: value} -> ["--flag", "value", ...]."""
    return [item for k, v in values.items() for item in (f"--{k}", str(v))]


def run_proc(script, argv=(), *, launcher=(), env=None, timeout=170):
    """``python script argv`` (after ``launcher``, e.g. ``("mpiexec", "-n", "2")``) from the repository
    root with one OpenMP thread; the CompletedProcess, output captured as text."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*launcher, sys.executable, script, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def save_random_model(path, **model_flags):
    """A randomly initialised diffusion model (torch seed 0) of upstream's defaults updated by
    ``model_flags``, its state_dict saved to ``path``; returns the model."""
    from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults

    kw = model_and_diffusion_defaults()
    kw.update(model_flags)
    torch.manual_seed(0)
    model, _ = create_model_and_diffusion(**kw)
    torch.save(model.state_dict(), path)
    return model
