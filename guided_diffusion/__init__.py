"""ADM (guided-diffusion) with the Time-Shift sampler of TS-DPM (ICLR 2024).

``guided_diffusion.load_model(checkpoint, flags=None, device="cpu", timestep_respacing="")`` returns
``(model, diffusion)`` in one call; see :func:`guided_diffusion.jobs.sample.load_model`.
"""


def load_model(checkpoint=None, flags=None, device="cpu", timestep_respacing=""):
    """``(model, diffusion)`` from a checkpoint and its flags: :func:`guided_diffusion.jobs.sample.load_model`."""
    from .jobs.sample import load_model as _load_model

    return _load_model(checkpoint, flags=flags, device=device, timestep_respacing=timestep_respacing)
