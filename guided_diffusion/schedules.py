"""Noise schedules: pure NumPy (float64), no torch state. (Time grids: :mod:`guided_diffusion.sampler.grids`.)"""

import math

import numpy as np


def get_named_beta_schedule(schedule_name, num_diffusion_timesteps):
    """Betas (T,) float64 for a named schedule.

    "linear": Ho et al. 2020, scaled so that any T gives the same curve as 1e-4..0.02 at T = 1000;
    its last beta is 20 / T, so it needs T > 20 (T <= 20 reached beta >= 1: alpha_bar 0 or < 0).
    "cosine": Nichol & Dhariwal 2021, alpha_bar(t) = cos^2(((t/T + 0.008) / 1.008) * pi/2),
    betas clipped at 0.999.
    "linear:START,END" / "scaled_linear:START,END": diffusers' ``beta_schedule`` of the same name
    with that ``beta_start`` / ``beta_end`` (see :func:`_ranged_schedule`).

    :raises ValueError: for T < 1, linear with T <= 20, or an unknown name (one-line messages).
    """
    if int(num_diffusion_timesteps) != num_diffusion_timesteps or num_diffusion_timesteps < 1:
        raise ValueError(f"diffusion_steps must be an integer >= 1, got {num_diffusion_timesteps!r}")
    if schedule_name == "linear":
        scale = 1000 / num_diffusion_timesteps
        if scale * 0.02 >= 1:
            raise ValueError(
                f"the linear noise_schedule needs diffusion_steps > 20 (its last beta is 20 / T = "
                f"{scale * 0.02:g} >= 1), got {num_diffusion_timesteps}; use more steps or 'cosine'"
            )
        return np.linspace(
            scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64
        )
    if schedule_name == "cosine":
        return betas_for_alpha_bar(
            num_diffusion_timesteps,
            lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2,
        )
    if isinstance(schedule_name, str) and schedule_name.split(":", 1)[0] in ("linear", "scaled_linear"):
        return _ranged_schedule(schedule_name, num_diffusion_timesteps)
    raise ValueError(
        f"unknown noise_schedule {schedule_name!r}: use 'linear', 'cosine', 'linear:START,END' or "
        f"'scaled_linear:START,END'"
    )


def check_noise_schedule(text):
    """``text`` if it names a schedule of :func:`get_named_beta_schedule`, else a one-line ValueError."""
    get_named_beta_schedule(text, 1000)
    return text


def _ranged_schedule(text, steps):
    """"linear:START,END": linspace(START, END, T) (no 1000 / T scaling: diffusers' "linear");
    "scaled_linear:START,END": linspace(sqrt START, sqrt END, T) ** 2 (diffusers' "scaled_linear").
    Betas (T,) float64 with 0 < START <= END < 1."""
    name, _, rest = text.partition(":")
    try:
        start, end = (float(v) for v in rest.split(","))
    except ValueError:
        raise ValueError(f"noise_schedule {text!r}: expected '{name}:START,END' with two numbers") from None
    if not 0 < start <= end < 1:
        raise ValueError(f"noise_schedule {text!r}: needs 0 < START <= END < 1")
    if name == "linear":
        return np.linspace(start, end, steps, dtype=np.float64)
    return np.linspace(start ** 0.5, end ** 0.5, steps, dtype=np.float64) ** 2


def betas_for_alpha_bar(num_diffusion_timesteps, alpha_bar, max_beta=0.999):
    """Discretise a continuous alpha_bar(t), t in [0, 1], into T betas: 1 - ab(t2)/ab(t1)."""
    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float64)

