"""Noise schedules and timestep respacing: pure NumPy (float64), no torch state."""

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


def _grid_count(text, prefix, section_counts):
    """N of a "<prefix>N" respacing string, or a one-line ValueError naming the string."""
    try:
        return int(text[len(prefix):])
    except ValueError:
        raise ValueError(
            f"timestep_respacing {section_counts!r}: expected '{prefix}N' with an integer N"
        ) from None


def space_timesteps(num_timesteps, section_counts):
    """The set of original timesteps to keep when respacing a T-step process.

    :param num_timesteps: T, the number of steps of the base process.
    :param section_counts: a list of per-section counts, or a string:
        - "ddimN": the smallest stride s with len(range(0, T, s)) == N (DDIM's uniform grid;
          never includes T-1);
        - "quadN": the DDIM repository's quadratic skip, ``int(x ** 2)`` for x in
          ``np.linspace(0, sqrt(0.8 T), N)`` (0 up to 0.8 T, dense near 0; TS-DPM Table 1). Duplicate
          timesteps (N too large for T: near 0 the gaps fall below 1) are an error, which names the
          largest N that gives N distinct steps (29 for T = 1000);
        - "pndmN": the TS-DPM DDPM-backbone repository's uniform grid (its ``sample_speed`` N):
          timesteps 1, 1 + T//N, ..., stopping before the last multiple, i.e. N - 1 steps for N
          dividing T (pndm10 at T = 1000: 801, 701, ..., 101, 1), the last step going to clean
          (upstream stops at alpha_bar[0], 1 - 1e-4 away for the linear schedule);
        - "N" or "a,b,c": split [0, T) into equal sections and take that many evenly spaced
          (rounded) steps from each; a single section includes both 0 and T-1.
    :return: a set of original timesteps (ints in [0, T)).
    :raises ValueError: with a message naming the impossible count.
    """
    if isinstance(section_counts, str):
        text = section_counts.strip()
        if text.startswith("ddim"):
            desired = _grid_count(text, "ddim", section_counts)
            if desired < 1:
                raise ValueError(f"timestep_respacing {section_counts!r}: N must be >= 1")
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            if desired == num_timesteps:
                return set(range(num_timesteps))
            raise ValueError(
                f"timestep_respacing {section_counts!r}: no integer stride gives exactly "
                f"{desired} steps out of {num_timesteps}; pick another N or use plain '{desired}'"
            )
        if text.startswith("pndm"):
            desired = _grid_count(text, "pndm", section_counts)
            if desired < 2 or desired > num_timesteps:
                raise ValueError(f"timestep_respacing {section_counts!r}: N must be in [2, {num_timesteps}]")
            skip = num_timesteps // desired
            steps = [k + 1 for k in range(0, num_timesteps, skip)][:-1]
            if not steps or steps[-1] >= num_timesteps:
                raise ValueError(f"timestep_respacing {section_counts!r}: gives no valid timestep for T = {num_timesteps}")
            return set(steps)
        if text.startswith("quad"):
            desired = _grid_count(text, "quad", section_counts)
            if desired < 1:
                raise ValueError(f"timestep_respacing {section_counts!r}: N must be >= 1")
            # More than T steps cannot be distinct; don't build a huge grid to find out.
            steps = _quadratic_timesteps(num_timesteps, min(desired, num_timesteps + 1))
            if len(steps) < desired:
                largest = next(
                    n for n in range(min(desired - 1, num_timesteps), 0, -1)
                    if len(_quadratic_timesteps(num_timesteps, n)) == n
                )
                got = (f"gives only {len(steps)} distinct" if desired <= num_timesteps
                       else f"cannot give {desired} distinct")
                raise ValueError(
                    f"timestep_respacing {section_counts!r}: the quadratic grid repeats timesteps near 0 "
                    f"and {got} steps out of {num_timesteps}; use quad{largest} or smaller, "
                    f"or 'ddimN' / plain 'N'"
                )
            return steps
        try:
            section_counts = [int(x) for x in text.split(",")]
        except ValueError:
            raise ValueError(
                f"timestep_respacing {section_counts!r}: expected '', 'N', 'a,b,c', 'ddimN' or 'quadN'"
            ) from None
    if not section_counts:
        raise ValueError("timestep_respacing: empty section list")
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if section_count < 1 or section_count > size:
            raise ValueError(
                f"timestep_respacing: cannot take {section_count} steps from a section of "
                f"{size} timesteps (section {i} of {len(section_counts)}, T={num_timesteps})"
            )
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(all_steps)


def _quadratic_timesteps(num_timesteps, count):
    """The set {int(x ** 2) : x in linspace(0, sqrt(0.8 T), count)} (DDIM repo, ``skip_type="quad"``)."""
    xs = np.linspace(0, np.sqrt(0.8 * num_timesteps), count) ** 2
    return set(int(v) for v in xs)
