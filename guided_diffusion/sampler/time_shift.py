"""The Time-Shift rule of TS-DPM (Li et al., ICLR 2024, arXiv 2305.15583, Algorithm 1).

A pure function of tensors: no model, no RNG, no history. Both sampling loops (DDIM and DDPM)
call :func:`shift_target` once per eligible step, with the current state ``x``, *before* forming
the next state; for rules that read this step's prediction (``needs_prediction(ts)``: rule
"adm-data") the call comes after the network call and before the update, with ``x0_hat``. The
shift changes only the **target** noise level of that step (``alpha_bar`` of the state the step
produces): the network is still called at the nominal timestep, the x0 / eps
prediction still uses the nominal ``alpha_bar_t``, and the next step returns to the nominal
grid ("target-only" semantics, as the paper's code does).

Notation. ``T`` base steps (1000), ``S`` respaced steps; ``cur`` is the ORIGINAL timestep of the
current step (``timestep_map[i]``), ``nxt`` the original timestep of the nominal next step (-1
after the last step). ``alphas_cumprod`` is the base schedule's (T,) alpha_bar table.

For each sample b, with v_b the unbiased variance of x_b over all C*H*W values:

rule "adm" (tingyu215/TS-DPM-ADM ``get_next_time_window`` + ``ddim_sample``; docs/method.md):
    candidates   tau in [cur - window//2, cur + window//2] (original timesteps)
    expected(tau) = alphas_cumprod[T - 1 - tau]      (upstream's flipped alpha_bar table)
    tau_b        = argmin_tau (v_b - expected(tau))^2   (first on ties)
    target       = alpha_bar_prev_full[tau_b - off] = alphas_cumprod[tau_b - off - 1],
                   off = T // (S - 1)                (upstream's stride approximation)
                 or, with ``grid_target`` (every grid that is not one of upstream's families),
                   target = alphas_cumprod[nxt + (tau_b - cur)]   (the grid's own next timestep,
                   moved by the matched shift; below 0 = clean), so a non-uniform grid is not
                   stepped by a stride it does not have.
    eligible     when the step is not the first one and cur > cutoff (strict).
rule "pndm" (Mingxiao-Li/TS-DPM ``PNMSolver.apply_time_shift``; docs/method.md):
    candidates   tau in [nxt - window//2, nxt + window//2]
    expected(tau) = 1 - alphas_cumprod[tau]
    target       = alphas_cumprod[tau_b]             (no stride offset)
    eligible     when the step is not the first one and nxt > cutoff (strict).
rule "adm-data" (ours; docs/method.md): as "adm" (window centred on cur,
    same eligibility cur > cutoff, same offset target), but with the data-aware expected variance
    expected_b(tau) = a_tau * Var(x0_hat_b) + (1 - a_tau),   a_tau = alphas_cumprod[tau]
    (the NON-flipped alpha_bar of the candidate), Var(x0_hat_b) the unbiased per-sample variance of
    this step's (clipped) x0 prediction. That is the variance of a_tau-level noisy data
    sqrt(a_tau) x0 + sqrt(1 - a_tau) eps with eps independent of x0. It needs x0_hat, so the target
    is chosen AFTER the network call (still made at the nominal t); with a perfect model and a
    state exactly at its nominal level it picks tau = cur (no spurious shift).
rule "offset" (ablation; docs section 3): as "adm" (window, eligibility, offset target) but no
    matching: every eligible sample takes the noisy edge of the clamped window,
    tau = min(cur + window//2, T-1). It equals "adm" wherever every sample sits at that edge.

``window = 0`` disables the shift (every step is plain DDIM / DDPM). Note that with the "adm"
rule (and "adm-data", "offset") any window >= 1 uses upstream's offset target even when tau_b = cur, so TS at a huge cutoff
equals plain sampling but "TS with no shift chosen" does not (upstream behaviour; docs/method.md).

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
from typing import NamedTuple, Optional, Sequence

import torch

TS_RULES = ("adm", "pndm", "adm-data", "offset")
_CENTRED_ON_NEXT = ("pndm",)  # every other rule centres its window on cur and tests cur > cutoff
_NEEDS_PREDICTION = ("adm-data",)


@dataclass(frozen=True)
class TimeShift:
    """Settings of the time-shift sampler (upstream flag names).

    :param window: width of the search window in original timesteps (half-width window // 2).
    :param cutoff: steps at or below this original timestep are never shifted.
    :param rule: "adm" (default, the ADM repo's rule), "pndm" (the DDPM-backbone repo's rule),
        "adm-data" (ours: data-aware expected variance, needs x0_hat) or "offset" (ablation: the
        window's noisy edge for every eligible sample).
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
    return (nxt if ts.rule in _CENTRED_ON_NEXT else cur) > ts.cutoff


def needs_prediction(ts: Optional[TimeShift]) -> bool:
    """Whether the rule reads this step's x0 prediction, i.e. must be called after the network
    call (with ``x0_hat``) instead of before it. False for None (no shift)."""
    return ts is not None and ts.rule in _NEEDS_PREDICTION


def shift_window(ts: TimeShift, cur: int, nxt: int, num_base_steps: int):
    """The clamped candidate window (lo, hi) of a step, in original timesteps (host-side ints).

    Centre cur ("adm", "adm-data", "offset") or nxt ("pndm"), half-width window // 2, clamped to
    [0, num_base_steps - 1]. ``hi`` is the noisy edge, ``lo`` the clean one.
    """
    half = ts.window // 2
    centre = nxt if ts.rule in _CENTRED_ON_NEXT else cur
    return max(centre - half, 0), min(centre + half, num_base_steps - 1)


def shift_target(
    x: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    ts: TimeShift,
    cur: int,
    nxt: int,
    num_steps: int,
    x0_hat: Optional[torch.Tensor] = None,
    grid_target: bool = False,
) -> ShiftResult:
    """Choose each sample's target noise level for an eligible step (see module docstring).

    :param x: (B, C, H, W) the current state x_t (raw, not clipped).
    :param alphas_cumprod: (T,) float64 base-schedule alpha_bar on x's device.
    :param ts: the settings; call only when ``is_eligible(ts, cur, nxt, first_step)`` is true.
    :param cur: original timestep of the current step.
    :param nxt: original timestep of the nominal next step (-1 after the last step).
    :param num_steps: S, the number of respaced steps (for the "adm" offset T // (S - 1)).
    :param x0_hat: (B, C, H, W) this step's (clipped) x0 prediction; required by "adm-data"
        (see :func:`needs_prediction`), ignored by the other rules.
    :param grid_target: rules other than "pndm": target index nxt + (tau_b - cur) instead of
        upstream's tau_b - T // (S - 1) - 1 (see :func:`target_index`).
    :return: a :class:`ShiftResult` of (B,) tensors on x's device.
    """
    T = alphas_cumprod.shape[0]
    lo, hi = shift_window(ts, cur, nxt, T)
    candidates = torch.arange(lo, hi + 1, device=x.device)
    if ts.rule == "offset":
        tau = torch.full((x.shape[0],), hi, dtype=candidates.dtype, device=x.device)
    else:
        if ts.rule == "adm":
            expected = alphas_cumprod.flip(0)[lo : hi + 1][None, :]
        elif ts.rule == "adm-data":
            if x0_hat is None:
                raise ValueError("ts_rule 'adm-data' needs x0_hat: call shift_target after the network call")
            a = alphas_cumprod[lo : hi + 1][None, :]
            expected = a * per_sample_variance(x0_hat)[:, None] + (1.0 - a)  # (B, K)
        else:
            expected = (1.0 - alphas_cumprod[lo : hi + 1])[None, :]
        variance = per_sample_variance(x)
        # argmin of squared distance; NaN distances count as +inf so a NaN sample picks index 0.
        dist = (variance[:, None] - expected).square()
        dist = torch.nan_to_num(dist, nan=float("inf"))
        tau = candidates[dist.argmin(dim=1)]
    if ts.rule != "pndm":
        idx = target_index(ts, tau, cur, nxt, num_steps, T, grid_target)
        ab = alphas_cumprod[idx.clamp(min=0)]
        target = torch.where(idx >= 0, ab, torch.ones_like(ab))
    else:
        target = alphas_cumprod[tau]
    return ShiftResult(tau, target)


def target_index(ts: TimeShift, tau, cur: int, nxt: int, num_steps: int, num_base_steps: int,
                 grid_target: bool = False):
    """Original timestep index of the shifted step's target (below 0 means clean), elementwise on tau.

    Rule "pndm": tau. Others: ``tau - T // (S - 1) - 1`` (upstream's stride approximation, kept on
    upstream's grid families), or with ``grid_target`` ``nxt + (tau - cur)``: the grid's own next
    timestep moved by the matched shift (``nxt`` = -1 after the last step).
    """
    if ts.rule == "pndm":
        return tau
    if grid_target:
        return tau - (cur - nxt)
    return tau - num_base_steps // max(num_steps - 1, 1) - 1


# ----------------------------------------------------------------------------- per-sample trace
def stack_step_picks(picks_per_step: Sequence[Optional[torch.Tensor]], batch: int) -> torch.Tensor:
    """Per-step matched timesteps of one batch as a (B, S) int32 CPU tensor, -1 where not shifted.

    :param picks_per_step: S entries in loop order (first step first): the (B,) ``timesteps`` of the
        step's :class:`ShiftResult`, or None where the step was not shifted.
    """
    out = torch.full((batch, len(picks_per_step)), -1, dtype=torch.int32)
    for s, picks in enumerate(picks_per_step):
        if picks is not None:
            out[:, s] = torch.as_tensor(picks).detach().to(device="cpu", dtype=torch.int32)
    return out


def edge_fraction(picks, lo, hi, side: str = "both") -> float:
    """Share of shifted picks that sit on an edge of their (clamped) candidate window.

    :param picks: matched original timesteps, any shape, e.g. (N, S) (tensor or array); entries < 0
        mean "not shifted" and are ignored.
    :param lo: clean edge of the window: an int or a tensor/array broadcastable to ``picks``
        (e.g. (S,) per step; see :func:`shift_window`).
    :param hi: noisy edge, likewise.
    :param side: "both" (either edge), "noisy" (hi only) or "clean" (lo only).
    :return: float in [0, 1]; NaN when nothing was shifted. Rule "offset" gives 1 by construction.
    """
    if side not in ("both", "noisy", "clean"):
        raise ValueError(f"side must be 'both', 'noisy' or 'clean', got {side!r}")
    picks = torch.as_tensor(picks).cpu().long()
    lo, hi = torch.as_tensor(lo).cpu().long(), torch.as_tensor(hi).cpu().long()
    shifted = picks >= 0
    n = int(shifted.sum())
    if n == 0:
        return float("nan")
    on = torch.zeros(picks.shape, dtype=torch.bool)
    if side in ("both", "clean"):
        on |= picks == lo
    if side in ("both", "noisy"):
        on |= picks == hi
    return float((on & shifted).sum()) / n


def shift_trace(timesteps, nominal, window_lo, window_hi) -> dict:
    """Arrays of the per-sample trace file (``--save_trace``): CPU tensors; ``np.savez(path,
    **{k: v.numpy() for k, v in trace.items()})`` writes it.

    :param timesteps: (N, S) matched original timestep per sample and step, -1 where not shifted
        (see :func:`stack_step_picks`; concatenate batches along N).
    :param nominal: (S,) original timestep of each step (``timestep_map`` in loop order).
    :param window_lo: (S,) clean edge of each step's clamped window (-1 where not shifted).
    :param window_hi: (S,) noisy edge (-1 where not shifted).
    :return: {"timesteps": (N, S) int32, "nominal": (S,) int32, "window_lo"/"window_hi": (S,) int32,
        "edge_fraction": () float64 share of shifted picks on either edge, "noisy_edge_fraction":
        () float64 share on the noisy edge}; the fractions are NaN when nothing was shifted.
    """
    ts = torch.as_tensor(timesteps).cpu().to(torch.int32)
    lo = torch.as_tensor(window_lo).cpu().to(torch.int32)
    hi = torch.as_tensor(window_hi).cpu().to(torch.int32)
    return {
        "timesteps": ts,
        "nominal": torch.as_tensor(nominal).cpu().to(torch.int32),
        "window_lo": lo,
        "window_hi": hi,
        "edge_fraction": torch.tensor(edge_fraction(ts, lo, hi), dtype=torch.float64),
        "noisy_edge_fraction": torch.tensor(edge_fraction(ts, lo, hi, side="noisy"), dtype=torch.float64),
    }

