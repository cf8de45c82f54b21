"""The Time-Shift rule of TS-DPM (Li et al., ICLR 2024, arXiv 2305.15583, Algorithm 1).

A pure function of tensors: no model, no RNG, no history. Both sampling loops (DDIM and DDPM)
call :func:`shift_target` once per step, with the current state ``x``, *before* forming the
next state. The shift changes only the **target** noise level of that step (``alpha_bar`` of the
state the step produces): the network is still called at the nominal timestep, the x0 / eps
prediction still uses the nominal ``alpha_bar_t``, and the next step returns to the nominal
grid ("target-only" semantics, as the paper's code does).

Notation. ``T`` base steps (1000), ``S`` respaced steps; ``cur`` is the ORIGINAL timestep of the
current step (``timestep_map[i]``), ``nxt`` the original timestep of the nominal next step (-1
after the last step). ``alphas_cumprod`` is the base schedule's (T,) alpha_bar table.

For each sample b, with v_b the unbiased variance of x_b over all C*H*W values:

rule "adm" (tingyu215/TS-DPM-ADM ``get_next_time_window`` + ``ddim_sample``; spec section 1.1):
    candidates   tau in [cur - window//2, cur + window//2] (original timesteps)
    expected(tau) = alphas_cumprod[T - 1 - tau]      (upstream's flipped alpha_bar table)
    tau_b        = argmin_tau (v_b - expected(tau))^2   (first on ties)
    target       = alpha_bar_prev_full[tau_b - off] = alphas_cumprod[tau_b - off - 1],
                   off = T // (S - 1)                (upstream's stride approximation)
    eligible     when the step is not the first one and cur > cutoff (strict).
rule "pndm" (Mingxiao-Li/TS-DPM ``PNMSolver.apply_time_shift``; spec section 6.3):
    candidates   tau in [nxt - window//2, nxt + window//2]
    expected(tau) = 1 - alphas_cumprod[tau]
    target       = alphas_cumprod[tau_b]             (no stride offset)
    eligible     when the step is not the first one and nxt > cutoff (strict).

``window = 0`` disables the shift (every step is plain DDIM / DDPM). Note that with the "adm"
rule any window >= 1 uses upstream's offset target even when tau_b = cur, so TS at a huge cutoff
equals plain sampling but "TS with no shift chosen" does not (upstream behaviour, spec section 8.3).

Where upstream breaks, this module does the following instead (all finite):
  * candidates are clamped to [0, T-1] on both sides (upstream truncates at T-1 but, near 0,
    switches to the uncentred window [0, window]);
  * a target index below 0 (tau - off - 1 < 0; upstream wraps around to the noisiest alpha_bar)
    is clamped to "clean": target alpha_bar = 1.0;
  * cutoff = 0 means "shift every eligible step" (cur > 0); upstream disabled the search but
    still used the offset target;
  * a NaN/inf variance (a diverged sample) selects the lowest candidate, as torch's argmin does
    upstream; the loops then stop with an error rather than writing NaNs.
A target noisier than the current step is allowed; the step functions handle it without NaN
(see ``GaussianDiffusion.ddim_step`` / ``ddpm_step``).
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch

TS_RULES = ("adm", "pndm")


@dataclass(frozen=True)
class TimeShift:
    """Settings of the time-shift sampler (upstream flag names).

    :param window: width of the search window in original timesteps (half-width window // 2).
    :param cutoff: steps at or below this original timestep are never shifted.
    :param rule: "adm" (default, the ADM repo's rule) or "pndm" (the DDPM-backbone repo's rule).
    """

    window: int
    cutoff: int
    rule: str = "adm"

    def __post_init__(self):
        if self.rule not in TS_RULES:
            raise ValueError(f"ts_rule must be one of {TS_RULES}, got {self.rule!r}")
        if int(self.window) < 0:
            raise ValueError(f"window must be >= 0, got {self.window}")
        if int(self.cutoff) < 0:
            raise ValueError(f"cutoff must be >= 0, got {self.cutoff}")


class ShiftResult(NamedTuple):
    """What the rule chose for one step.

    ``timesteps``: (B,) int64, the matched original timestep tau_b per sample.
    ``target_alphas_cumprod``: (B,) float64, alpha_bar of the state this step produces.
    """

    timesteps: torch.Tensor
    target_alphas_cumprod: torch.Tensor


def per_sample_variance(x):
    """Unbiased variance of each sample over all its values: (B, ...) -> (B,) float64.

    Sum and sum of squares (float32 reductions, combined in float64): ~50x cheaper than
    ``torch.var`` on this CPU for (512, 3072), equal to it to ~1e-6 relative.
    """
    flat = x.reshape(x.shape[0], -1)
    n = flat.shape[1]
    s1 = flat.sum(dim=1).double()
    s2 = (flat * flat).sum(dim=1).double()
    return (s2 - s1 * s1 / n) / max(n - 1, 1)


def is_eligible(ts: TimeShift, cur: int, nxt: int, first_step: bool) -> bool:
    """Whether the step from original timestep ``cur`` to ``nxt`` is shifted (host-side ints)."""
    if first_step or ts.window == 0:
        return False
    return (cur if ts.rule == "adm" else nxt) > ts.cutoff


def shift_target(
    x: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    ts: TimeShift,
    cur: int,
    nxt: int,
    num_steps: int,
) -> ShiftResult:
    """Choose each sample's target noise level for an eligible step (see module docstring).

    :param x: (B, C, H, W) the current state (raw, not clipped).
    :param alphas_cumprod: (T,) float64 base-schedule alpha_bar on x's device.
    :param ts: the settings; call only when ``is_eligible(ts, cur, nxt, first_step)`` is true.
    :param cur: original timestep of the current step.
    :param nxt: original timestep of the nominal next step (-1 after the last step).
    :param num_steps: S, the number of respaced steps (for the "adm" offset T // (S - 1)).
    :return: a :class:`ShiftResult` of (B,) tensors on x's device.
    """
    T = alphas_cumprod.shape[0]
    half = ts.window // 2
    centre = cur if ts.rule == "adm" else nxt
    lo, hi = max(centre - half, 0), min(centre + half, T - 1)
    candidates = torch.arange(lo, hi + 1, device=x.device)
    if ts.rule == "adm":
        expected = alphas_cumprod.flip(0)[lo : hi + 1]
    else:
        expected = 1.0 - alphas_cumprod[lo : hi + 1]
    variance = per_sample_variance(x)
    # argmin of squared distance; NaN distances count as +inf so a NaN sample picks index 0.
    dist = (variance[:, None] - expected[None, :]).square()
    dist = torch.nan_to_num(dist, nan=float("inf"))
    tau = candidates[dist.argmin(dim=1)]
    if ts.rule == "adm":
        off = T // max(num_steps - 1, 1)
        idx = tau - off - 1
        ab = alphas_cumprod[idx.clamp(min=0)]
        target = torch.where(idx >= 0, ab, torch.ones_like(ab))
    else:
        target = alphas_cumprod[tau]
    return ShiftResult(tau, target)
