"""The bundled demo model: a small grey-scale ADM UNet trained on Fashion-MNIST 32x32.

``assets/demo_fmnist32.pt`` is its EMA state_dict and ``assets/demo_fmnist32.json`` its model and
diffusion flags and output names (see ``assets/MODEL_CARD.md``). The sampling scripts and the
table driver use it when they are given no ``--model_path`` and no model flags (or the demo's own
checkpoint path and no model flags), so a fresh clone can sample with no download.
"""

import json
import os

from .settings import DiffusionConfig, ModelConfig, field_names

ASSET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
DEMO_CHECKPOINT = os.path.join(ASSET_DIR, "demo_fmnist32.pt")
DEMO_FLAGS = os.path.join(ASSET_DIR, "demo_fmnist32.json")

# Flags that describe the model (so giving any of them means "not the demo"); the respacing is a
# sampler choice and stays free.
MODEL_FLAG_NAMES = frozenset(field_names(ModelConfig) + field_names(DiffusionConfig)) - {"timestep_respacing"}


# The demo model's time-shift setting per DDIM step count (rule "adm", the paper's default): window,
# cutoff. Measured on this model (1,000 samples per cell, FID against 2,000 Fashion-MNIST test images;
# docs/results/demo_solvers.md): window 40 at 5 steps, 10 at 10 steps, 4 at 20 steps (within the
# noise of plain sampling there), cutoff 300. The paper's CIFAR-10 windows are too wide for this
# under-trained model. The README, the sampling scripts' --help and the benches read this table.
DEMO_TS_PRESETS = {5: (40, 300), 10: (10, 300), 20: (4, 300)}
DEMO_TS_RULE = "adm"


def demo_ts_preset(steps):
    """(window, cutoff) of :data:`DEMO_TS_PRESETS` for ``steps`` DDIM steps (the nearest listed count)."""
    steps = int(steps)
    nearest = min(DEMO_TS_PRESETS, key=lambda s: (abs(s - steps), s))
    return DEMO_TS_PRESETS[nearest]


def demo_command(steps=10, num_samples=64, out_dir="out"):
    """The README's demo command (DDIM vs TS-DDIM with the demo preset for ``steps``), as argv."""
    window, cutoff = demo_ts_preset(steps)
    return ["--num_samples", str(num_samples), "--batch_size", str(num_samples), "--use_ddim", "True",
            "--timestep_respacing", f"ddim{steps}", "--do_time_shift", "True", "--window", str(window),
            "--cutoff", str(cutoff), "--out_dir", out_dir, "--compare_grid", f"{out_dir}/ddim_vs_tsddim.png"]


def demo_available():
    return os.path.isfile(DEMO_CHECKPOINT) and os.path.isfile(DEMO_FLAGS)


def demo_settings():
    """{flag: value} that select the demo model: model_path, its model flags, data_type, model_type."""
    if not demo_available():
        from .errors import CheckpointError

        raise CheckpointError(
            f"no --model_path given and the bundled demo model is missing ({DEMO_CHECKPOINT}); "
            "pass --model_path and your checkpoint's model flags"
        )
    with open(DEMO_FLAGS) as f:
        info = json.load(f)
    return dict(info["model_flags"], model_path=DEMO_CHECKPOINT, data_type=info["data_type"],
                model_type=info["model_type"])


def _given(argv, name):
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv)


def is_demo_path(path):
    """Whether ``path`` is the bundled demo checkpoint."""
    return bool(path) and os.path.isfile(path) and os.path.realpath(path) == os.path.realpath(DEMO_CHECKPOINT)


def maybe_use_demo(job, argv):
    """``job`` switched to the demo model when ``argv`` names no model (see the module docstring).

    ``--data_type`` / ``--model_type`` given on the command line are kept.
    """
    if any(_given(argv, k) for k in MODEL_FLAG_NAMES):
        return job
    if job.run.model_path and not is_demo_path(job.run.model_path):
        return job
    settings = demo_settings()
    for key in ("data_type", "model_type"):
        if _given(argv, key):
            settings.pop(key)
    return job.with_flags(**settings)
