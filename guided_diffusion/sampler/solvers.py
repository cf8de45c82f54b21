"""Deterministic reverse-process solvers: DDIM, DPM-Solver++(2M), iPNDM, S-PNDM and F-PNDM.

Pure functions of tensors: no model inside, no RNG, no growing history. Each solver is a small
frozen object with two methods::

    state = solver.init_state()
    x_next, state = solver.step(state, x, eps, x0, a_cur, a_next, *, is_last=False,
                                num_steps=None, clip_denoised=False, t_cur=None, t_next=None,
                                eval_eps=None, alpha_at=None)

The loop (``sampling.py``) walks explicit pairs (t_cur, t_next) of ORIGINAL timesteps. At each
pair it calls the network once at the nominal t_cur, forms ``eps`` and ``x0`` (x0 clipped to
[-1, 1] when clip_denoised, and then eps re-derived from the clipped x0 exactly as
``GaussianDiffusion.ddim_step`` does, so that the two agree:
``eps = (x / sqrt(a_cur) - x0) / sqrt(1 / a_cur - 1)``), chooses the step's target alpha_bar
``a_next`` (nominal, or per sample when the time shift moved it), and calls ``step``.

Arguments of ``step`` (B = batch):
  state     the value returned by the previous ``step`` (or ``init_state()`` before the first);
            a fixed-size NamedTuple (or None for DDIM): memory does not grow with the step count.
  x         (B, C, H, W) the current state, taken to be at noise level a_cur.
  eps, x0   (B, C, H, W) the network's noise and data predictions at (x, t_cur), consistent with
            each other at a_cur (see above).
  a_cur     alpha_bar of the network call: a float, a 0-d or a (B,) tensor (float64 preferred).
  a_next    alpha_bar of the state to produce: same forms; (B,) when the time shift moved it.
            a_next = 1 means "clean" (the ADM loop's final step); every solver handles it.
  is_last   whether this is the final step of the trajectory (DPM-Solver++ lower_order_final).
  num_steps number of steps the loop walks in total (DPM-Solver++: lower order only when < 15).
  clip_denoised  the DDIM step's rule for the step's own data prediction (see below); the loop
            passes its ``clip_denoised``.
  t_cur, t_next, eval_eps, alpha_at: needed only by the S-PNDM / F-PNDM warm-up steps, which
            cost extra network evaluations (see below); other solvers ignore them.

Per-step coefficients are computed in float64 and cast to x's dtype, like ``ddim_step``.

Clipping. Every step here is a DDIM move x' = sqrt(a') x0* + sqrt(1 - a') eps* from some data
prediction x0* with its consistent eps*: DDIM's x0, DPM-Solver++'s combination D, and for iPNDM,
S-PNDM and F-PNDM the x0 = (x - sqrt(1 - a) e) / sqrt(a) that their combined eps e implies (their
update sqrt(a'/a) x + ... is this move written with e). With ``clip_denoised`` that x0* is clipped
to [-1, 1] as the DDIM step clips its x0: pixels where it lies outside are moved by the DDIM step
from the clipped value, the others keep the solver's own formula bit for bit
(:func:`_clip_through_x0`). Without it, on a grid starting at T - 1 of a cosine schedule
(alpha_bar(999) = 2.4e-9), sqrt(a'/a) ~ 3.5e3 multiplies any part of e that is not the noise of x
(the Runge-Kutta / Heun stages mix eps from different states) and the samples explode.

Extra network evaluations (S-PNDM / F-PNDM warm-up only). The solver asks the loop through a
callable ``eval_eps(x, t, a) -> eps``: ``x`` (B, C, H, W) an intermediate state, ``t`` (B,) float
original timesteps (possibly non-integer: F-PNDM's midpoints), ``a`` (B,) float64 its alpha_bar.
The loop's closure must return eps processed exactly as the main call's (ES scaling, x0 clipping
and re-derivation when clip_denoised) and must call the network at the float time ``t``.
``alpha_at(t)`` maps such times to alpha_bar (F-PNDM midpoints); :func:`floor_alpha_at` gives the
upstream rule ``alphas_cumprod[floor(t)]``. ``t_cur`` / ``t_next``: floats or (B,) tensors of
original timesteps; ``t_next`` must be the time whose alpha_bar is ``a_next``: with the time shift,
rule "pndm" tau_b, rule "adm" tau_b - off - 1 (its target index; -1 = clean). Since t may be
fractional, the closure calls the raw network with original timesteps (not the respaced-index
wrapper). The number of calls a run makes is :func:`nfe`; :meth:`extra_evals` says it per step
before the step runs.

Time shift (per-sample a_next). In every solver here the shifted target enters ONLY the step it
was chosen for ("target-only", as the ADM loop and the DDPM-backbone repo's PNDM do): the history
keeps what was evaluated at the nominal times, and the next step starts again from the nominal
grid. Each class's docstring says exactly where a_next enters. With the shift off (a_next the
nominal value) nothing differs from the plain solver.
"""

from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch

__all__ = [
    "REGISTRY",
    "SOLVER_NAMES",
    "SOLVERS",
    "SolverSpec",
    "solver_spec",
    "ddim_update",
    "DDIM",
    "DPMSolverPP2M",
    "IPNDM",
    "SPNDM",
    "FPNDM",
    "DPMSolverPP2MState",
    "EpsHistory",
    "get_solver",
    "nfe",
    "x0_from_eps",
    "eps_from_x0",
    "log_snr",
    "floor_alpha_at",
    "pndm_time_pairs",
]

# ----------------------------------------------------------------------------- helpers
def _ab(a, x):
    """alpha_bar as a float64 tensor on x's device: 0-d or (B,)."""
    a = torch.as_tensor(a, dtype=torch.float64, device=x.device)
    if a.ndim > 1:
        raise ValueError(f"alpha_bar must be a scalar or (B,), got shape {tuple(a.shape)}")
    return a


def _per_sample(c, x):
    """float64 coefficient, 0-d or (B,), -> x's dtype, broadcastable against (B, C, H, W)."""
    c = c.to(x.dtype)
    return c.reshape((-1,) + (1,) * (x.ndim - 1)) if c.ndim == 1 else c


def x0_from_eps(x, eps, a):
    """x0 = (x - sqrt(1 - a) eps) / sqrt(a), a scalar or (B,) alpha_bar."""
    a = _ab(a, x)
    return torch.addcmul(x * _per_sample(torch.sqrt(1.0 / a), x), eps, _per_sample(-torch.sqrt(1.0 / a - 1), x))


def eps_from_x0(x, x0, a):
    """eps = (x / sqrt(a) - x0) / sqrt(1/a - 1): the noise consistent with x0 at alpha_bar a."""
    a = _ab(a, x)
    return (x * _per_sample(torch.sqrt(1.0 / a), x) - x0) / _per_sample(torch.sqrt(1.0 / a - 1), x)


def log_snr(a):
    """lambda = log(sqrt(a) / sqrt(1 - a)) = 0.5 log(a / (1 - a)); +inf at a = 1."""
    a = torch.as_tensor(a, dtype=torch.float64)
    return 0.5 * (torch.log(a) - torch.log1p(-a))


def _clip_through_x0(x_next, x, x0, a, a_next, clip_denoised):
    """The clip_denoised rule of the DDIM step applied to a solver's step (B, C, H, W tensors).

    Every step here moves x (alpha_bar a) to x' (alpha_bar a') as DDIM does from some data
    prediction x0 (per pixel): ``x_next`` is the solver's own evaluation of that move. Where x0 lies
    outside [-1, 1] and ``clip_denoised``, the pixel's x' is replaced by the DDIM step from
    clip(x0, -1, 1), as ``ddim_step`` moves from its clipped x0. Elsewhere ``x_next`` is kept bit for
    bit, so a run whose x0 never leaves [-1, 1] is unchanged. Without ``clip_denoised``: ``x_next``.
    """
    if not clip_denoised:
        return x_next
    outside = x0.abs() > 1
    return torch.where(outside, ddim_update(x, x0.clamp(-1, 1), a, a_next), x_next)


def _transfer(x, eps, a, a_next, clip_denoised=False):
    """DDIM (eta 0) move from alpha_bar a to a_next with a fixed eps (PNDM's ``transfer``):
    x' = sqrt(a'/a) x + (sqrt(1 - a') - sqrt(a' (1 - a) / a)) eps
       = sqrt(a') x0 + sqrt(1 - a') eps with x0 = (x - sqrt(1 - a) eps) / sqrt(a).

    The coefficient sqrt(a'/a) of x is large when a is tiny (cosine alpha_bar(999) ~ 2e-9: about
    3.5e3 to alpha_bar(888)): any part of eps that is not the noise of x then enters x' amplified.
    With ``clip_denoised`` the move goes through the clipped x0 (:func:`_clip_through_x0`), as the
    DDIM step does; it is upstream's formula bit for bit wherever x0 stays in [-1, 1].
    x, eps: (B, C, H, W); a, a_next: float64 0-d or (B,).
    """
    c_x = torch.sqrt(a_next / a)
    c_e = torch.sqrt(1 - a_next) - torch.sqrt(a_next * (1 - a) / a)
    x_next = torch.addcmul(x * _per_sample(c_x, x), eps, _per_sample(c_e, x))
    if not clip_denoised:
        return x_next
    return _clip_through_x0(x_next, x, x0_from_eps(x, eps, a), a, a_next, clip_denoised)


def floor_alpha_at(alphas_cumprod):
    """``alpha_at(t)`` for a (T,) base alpha_bar table: ``table[floor(t)]``, and 1.0 for t < 0.

    This is the DDPM-backbone repo's rule (``alphas_cump[t.long()]``) for F-PNDM's midpoint times
    (t + t_next) / 2, extended with the ADM loop's convention that time -1 is "clean".
    """
    table = torch.as_tensor(alphas_cumprod, dtype=torch.float64)

    def alpha_at(t):
        t = torch.as_tensor(t)
        tab = table.to(t.device)
        idx = torch.floor(t.double()).long()
        return torch.where(idx >= 0, tab[idx.clamp(min=0, max=len(tab) - 1)], torch.ones_like(tab[0]))

    return alpha_at


def pndm_time_pairs(sample_speed, num_timesteps=1000):
    """The DDPM-backbone repo's uniform grid (``PNMSolver._make_time_steps`` + ``sample``).

    skip = T // S; seq = [k + 1 for k in range(0, T, skip)] without its last element;
    next = [0] + seq[:-1]; the pairs run from the noisiest down. When S divides T this is S - 1
    transitions (S = 10: 801 -> 701 ... 101 -> 1 -> 0; S = 100 starts at 981), ending at
    alpha_bar[0] (not clean).
    :return: list of (t, t_next) int pairs of original timesteps, noisiest first.
    """
    if sample_speed < 2 or sample_speed > num_timesteps:
        raise ValueError(f"sample_speed must be in [2, {num_timesteps}], got {sample_speed}")
    skip = num_timesteps // sample_speed
    seq = [k + 1 for k in range(0, num_timesteps, skip)][:-1]
    seq_next = [0] + seq[:-1]
    return list(zip(reversed(seq), reversed(seq_next)))


# ----------------------------------------------------------------------------- solvers
class DPMSolverPP2MState(NamedTuple):
    """DPM-Solver++(2M) history: the previous step's x0 prediction and the log-SNR of the
    alpha_bar it was predicted at (the NOMINAL a_cur of that step; 0-d or (B,) float64)."""

    x0_prev: Optional[torch.Tensor] = None
    lambda_prev: Optional[torch.Tensor] = None


class EpsHistory(NamedTuple):
    """Previous eps predictions at nominal grid points, newest first (at most ``max_history``)."""

    eps: Tuple[torch.Tensor, ...] = ()


def ddim_update(x, x0, a_cur, a_next, *, eta=0.0, draw_noise=None):
    """The DDIM move (Song et al. eq. 12): the one DDIM of the project (``GaussianDiffusion.ddim_step``
    and :class:`DDIM` both call it).

    :param x: (B, C, H, W) state at alpha_bar ``a_cur``; ``x0`` (B, C, H, W) its (clipped) x0 prediction.
    :param a_cur, a_next: alpha_bar of x and of the state to produce: floats, 0-d or (B,) tensors
        (float64 preferred); a per-sample ``a_next`` is the time shift's target.
    :param eta: 0 deterministic; 1 gives DDPM's posterior variance.
    :param draw_noise: callable returning a (B, C, H, W) standard normal z, or None for a
        deterministic step (the loop passes None on the last step); called once, only with eta > 0.

    With eps = (x / sqrt(a) - x0) / sqrt(1/a - 1) re-derived from x0,
    x' = sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps + sigma z and
    sigma = eta * sqrt((1 - a') / (1 - a)) * sqrt(1 - a / a'), evaluated as
    ``c_x * x + c_x0 * x0`` with per-sample coefficients computed in float64. When the target is
    noisier than x (a' < a, possible with a time shift) ``1 - a / a'`` is clamped at 0, so sigma = 0
    and the step deterministically re-noises x0 to level a'.
    """
    a = _ab(a_cur, x)
    a_next = _ab(a_next, x)
    stochastic = eta > 0 and draw_noise is not None
    if stochastic:
        sigma = eta * torch.sqrt((1 - a_next) / (1 - a)) * torch.sqrt((1 - a / a_next).clamp(min=0))
        k = torch.sqrt((1 - a_next - sigma**2).clamp(min=0))
    else:
        k = torch.sqrt(1 - a_next)
    # x' = sqrt(a') x0 + k * eps, eps = (x * sr - x0) / srm1
    sr = torch.sqrt(1.0 / a)
    srm1 = torch.sqrt(1.0 / a - 1)
    c_x0 = _per_sample(torch.sqrt(a_next) - k / srm1, x)
    c_x = _per_sample(k * sr / srm1, x)
    sample = torch.addcmul(x * c_x, x0, c_x0)
    if stochastic:
        sample.addcmul_(_per_sample(sigma, x), draw_noise())
    return sample


@dataclass(frozen=True)
class DDIM:
    """DDIM with eta = 0 in the solver interface: :func:`ddim_update`, the order-1 reference of
    every solver here. Uses x and x0 only (eps is ignored). State: None.
    Time shift: a_next is this step's target only; nothing is carried.
    """

    name: str = "ddim"

    def init_state(self):
        return None

    def extra_evals(self, state, *, ends_clean=False):
        return 0

    def step(self, state, x, eps, x0, a_cur, a_next, **unused):
        return ddim_update(x, x0, a_cur, a_next), None


@dataclass(frozen=True)
class DPMSolverPP2M:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2; diffusers' "midpoint" form).

    lambda = log(sqrt(a) / sqrt(1 - a)); alpha_t = sqrt(a'), sigma_t = sqrt(1 - a'),
    sigma_s = sqrt(1 - a); h = lambda(a') - lambda(a); h_prev = lambda(a) - lambda_prev;
    order 1:  x' = (sigma_t / sigma_s) x - alpha_t (exp(-h) - 1) x0          (= DDIM)
    order 2:  x' = order 1 - 0.5 alpha_t (exp(-h) - 1) (h / h_prev) (x0 - x0_prev)
    (i.e. D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev with r = h_prev / h). Order 1 is used on the first
    step (no history), on the last step when ``lower_order_final`` and num_steps < 15 (as diffusers
    does), and for every sample whose target is clean (a' = 1: h is infinite; diffusers' final
    step to sigma = 0 is first order for the same reason). Order-1 steps equal DDIM. An order-2
    step is the DDIM move from D; with ``clip_denoised`` D is clipped (module docstring).

    State: :class:`DPMSolverPP2MState` (x0 of this step, lambda(a_cur)).

    Time shift: a per-sample a_next enters only this step's h (and alpha_t, sigma_t). The stored
    lambda is the NOMINAL lambda(a_cur) of the network call, not the shifted target of the
    previous step: the loop calls the network at the nominal time, so x0_prev was predicted at
    lambda(a_cur_prev), and (x0 - x0_prev) / h_prev estimates dx0/dlambda only with the lambdas
    where the two predictions were made. (The DDPM-backbone repo's DPM-Solver instead carries the
    shifted time forward and calls the network there; our loop never moves the network's time.)
    With the shift off the two coincide.
    """

    lower_order_final: bool = True
    name: str = "dpm++2m"

    def init_state(self):
        return DPMSolverPP2MState()

    def extra_evals(self, state, *, ends_clean=False):
        return 0

    def step(self, state, x, eps, x0, a_cur, a_next, *, is_last=False, num_steps=None, clip_denoised=False,
             **unused):
        a = _ab(a_cur, x)
        a_next = _ab(a_next, x)
        clean = a_next >= 1
        a_t = torch.where(clean, torch.full_like(a_next, 0.5), a_next)  # finite h; masked below
        lam_s = log_snr(a)
        h = log_snr(a_t) - lam_s
        alpha_t = torch.sqrt(a_next)
        sigma_t = torch.sqrt(1 - a_next)
        sigma_s = torch.sqrt(1 - a)
        # order 1: (sigma_t / sigma_s) x + alpha_t (1 - exp(-h)) x0; with a' = 1 this is x0
        one_minus_exp = torch.where(clean, torch.ones_like(h), -torch.expm1(-h))
        x_next = torch.addcmul(
            x * _per_sample(sigma_t / sigma_s, x), x0, _per_sample(alpha_t * one_minus_exp, x)
        )
        if is_last and self.lower_order_final and num_steps is None:
            raise ValueError("dpm++2m: pass num_steps with is_last (lower_order_final applies below 15)")
        lower_final = is_last and self.lower_order_final and num_steps < 15
        if state.x0_prev is not None and not lower_final:
            h_prev = lam_s - state.lambda_prev
            c2 = 0.5 * alpha_t * one_minus_exp * h / h_prev
            c2 = torch.where(clean, torch.zeros_like(c2), c2)
            x_next = x_next + _per_sample(c2, x) * (x0 - state.x0_prev)
            if clip_denoised:  # D = x0 + (c2 / (alpha_t (1 - exp(-h)))) (x0 - x0_prev): its data prediction
                r = torch.where(clean, torch.zeros_like(h), 0.5 * h / h_prev)
                d = torch.addcmul(x0, x0 - state.x0_prev, _per_sample(r, x))
                x_next = _clip_through_x0(x_next, x, d, a, a_next, clip_denoised)
        return x_next, DPMSolverPP2MState(x0, lam_s)


@dataclass(frozen=True)
class IPNDM:
    """iPNDM (Zhang & Chen, DEIS, ICLR 2023; the zju-pi/diff-sampler / EDM-variable form).

    In EDM variables sigma = sqrt((1 - a) / a), xbar = x / sqrt(a), d = eps (for VP this is
    (xbar - x0) / sigma): xbar' = xbar + (sigma' - sigma) * D, x' = sqrt(a') xbar', with fixed
    Adams-Bashforth combinations of the newest d0 and the history d1, d2, d3:
    order 1: d0; 2: (3 d0 - d1) / 2; 3: (23 d0 - 16 d1 + 5 d2) / 12;
    4: (55 d0 - 59 d1 + 37 d2 - 9 d3) / 24; the order is 1 + len(history), at most ``max_order``.
    One step (order 1) is DDIM. No extra network calls; no lower-order final step. With
    ``clip_denoised`` the x0 that d implies is clipped (module docstring) on orders above 1.

    State: :class:`EpsHistory` of the last max_order - 1 eps, newest first.

    Time shift: a per-sample a_next enters only this step's sigma' and sqrt(a'). The AB
    coefficients do not depend on step sizes, so the eps history (evaluated at the nominal times)
    is kept unchanged: target-only, as the DDPM-backbone repo does for PNDM.
    """

    max_order: int = 4
    name: str = "ipndm"

    _COEFFS = {
        1: (1.0,),
        2: (3 / 2, -1 / 2),
        3: (23 / 12, -16 / 12, 5 / 12),
        4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
    }

    def __post_init__(self):
        if self.max_order not in (1, 2, 3, 4):
            raise ValueError(f"ipndm max_order must be 1..4, got {self.max_order}")

    def init_state(self):
        return EpsHistory()

    def extra_evals(self, state, *, ends_clean=False):
        return 0

    def step(self, state, x, eps, x0, a_cur, a_next, *, clip_denoised=False, **unused):
        a = _ab(a_cur, x)
        a_next = _ab(a_next, x)
        ds = (eps,) + state.eps
        order = min(len(ds), self.max_order)
        d = _ab_combine(ds, self._COEFFS[order])
        sigma = torch.sqrt((1 - a) / a)
        sigma_next = torch.sqrt((1 - a_next) / a_next)
        s_next = torch.sqrt(a_next)
        # x' = sqrt(a') (x / sqrt(a) + (sigma' - sigma) d)
        x_next = torch.addcmul(
            x * _per_sample(s_next / torch.sqrt(a), x), d, _per_sample(s_next * (sigma_next - sigma), x)
        )
        if clip_denoised and order > 1:  # order 1: d = eps, consistent with the loop's clipped x0
            x_next = _clip_through_x0(x_next, x, x0_from_eps(x, d, a), a, a_next, clip_denoised)
        return x_next, EpsHistory(ds[: self.max_order - 1])


def _ab_combine(ds, coeffs):
    out = ds[0] * coeffs[0]
    for d, c in zip(ds[1:], coeffs[1:]):
        out = out + d * c
    return out


@dataclass(frozen=True)
class _PNDM:
    """Shared S-PNDM / F-PNDM logic (Liu et al. 2022 as in Mingxiao-Li/TS-DPM ``PNMSolver``)."""

    name: str = ""
    warmup_steps: int = 0      # steps with a classical warm-up before the linear multistep
    warmup_extra: int = 0      # extra network calls per warm-up step
    max_history: int = 0

    def init_state(self):
        return EpsHistory()

    def _in_warmup(self, state):
        return len(state.eps) < self.warmup_steps

    def extra_evals(self, state, *, ends_clean=False):
        """Extra ``eval_eps`` calls the next ``step`` makes: warmup_extra in a warm-up step, else 0.
        ``ends_clean``: the step's target is alpha_bar = 1 for some sample; a warm-up step then
        falls back to DDIM for the whole batch (no network time exists at the clean end): 0."""
        return self.warmup_extra if self._in_warmup(state) and not ends_clean else 0

    def step(self, state, x, eps, x0, a_cur, a_next, *, t_cur=None, t_next=None, eval_eps=None,
             alpha_at=None, clip_denoised=False, **unused):
        a = _ab(a_cur, x)
        a_next = _ab(a_next, x)
        if self._in_warmup(state):
            if bool((a_next >= 1).any()):
                # The warm-up would evaluate the network at the clean end (no time there):
                # take the Euler (DDIM) step for the batch; only reachable when a run ends during
                # warm-up (or a shift targets alpha_bar = 1). One host read, warm-up steps only.
                e = eps
            else:
                if eval_eps is None or t_cur is None or t_next is None:
                    raise ValueError(f"{self.name}: a warm-up step needs eval_eps, t_cur and t_next")
                e = self._warmup_eps(x, eps, a, a_next, t_cur, t_next, eval_eps, alpha_at, clip_denoised)
            history = (eps,) + state.eps
        else:
            ds = (eps,) + state.eps
            e = self._multistep_eps(ds)
            history = ds
        return _transfer(x, e, a, a_next, clip_denoised), EpsHistory(history[: self.max_history])


@dataclass(frozen=True)
class SPNDM(_PNDM):
    """S-PNDM: improved Euler (Heun) on the first step, then 2-step linear multistep on eps.

    Step 1 (2 calls): e1 = eps(x, t); x2 = transfer(x, t -> t', e1); e2 = eval_eps(x2, t');
    e = (e1 + e2) / 2. Later steps (1 call): e = (3 eps_new - eps_prev) / 2. Every step then
    x' = transfer(x, a -> a', e) (DDIM with eps e; with ``clip_denoised`` through the clipped x0 that
    e implies, in the Heun stage too). The history holds the eps of the network call
    at each grid point (e1 for the first step, not the averaged e), as upstream's ``ets``.
    NFE: steps + 1. Upstream's "S" (``--sample_speed``) walks S - 1 steps: S NFE.

    State: :class:`EpsHistory` with the last grid-point eps.

    Time shift: a per-sample a' (and its time t') is this step's target; in the warm-up step the
    Heun stage is evaluated at the shifted t' (upstream likewise). The eps history is kept.
    """

    name: str = "s-pndm"
    warmup_steps: int = 1
    warmup_extra: int = 1
    max_history: int = 1

    def _warmup_eps(self, x, e1, a, a_next, t_cur, t_next, eval_eps, alpha_at, clip):
        x2 = _transfer(x, e1, a, a_next, clip)
        e2 = eval_eps(x2, _times(t_next, x), a_next)
        return (e1 + e2) / 2

    def _multistep_eps(self, ds):
        return 0.5 * (3 * ds[0] - ds[1])


@dataclass(frozen=True)
class FPNDM(_PNDM):
    """F-PNDM: classical Runge-Kutta on the first three steps, then 4-step linear multistep.

    Warm-up step (4 calls), with t_m = (t + t') / 2 and a_m = alpha_at(t_m) (upstream:
    ``alphas_cump[t_m.long()]``, the network called at the float t_m):
    e1 = eps(x, t); x2 = transfer(x, a -> a_m, e1); e2 = eval_eps(x2, t_m);
    x3 = transfer(x, a -> a_m, e2); e3 = eval_eps(x3, t_m); x4 = transfer(x, a -> a', e3);
    e4 = eval_eps(x4, t'); e = (e1 + 2 e2 + 2 e3 + e4) / 6.
    Later steps (1 call): e = (55 e0 - 59 e1 + 37 e2 - 9 e3) / 24 over the newest four grid-point
    eps. Every step: x' = transfer(x, a -> a', e), every stage's transfer too with ``clip_denoised``
    through the clipped x0 that its eps implies. History: the grid-point eps (e1 of the warm-up).
    NFE: 4 min(steps, 3) + max(steps - 3, 0) = steps + 9 for steps >= 3. Upstream's "S" walks
    S - 1 steps: (S - 1) + 9 NFE (18 for S = 10).

    State: :class:`EpsHistory` with the last three grid-point eps.

    Time shift: a per-sample a' (time t') is this step's target; in warm-up steps the midpoint
    t_m = (t + t') / 2 uses the shifted t', as upstream does. The eps history is kept.
    """

    name: str = "f-pndm"
    warmup_steps: int = 3
    warmup_extra: int = 3
    max_history: int = 3

    def _warmup_eps(self, x, e1, a, a_next, t_cur, t_next, eval_eps, alpha_at, clip):
        if alpha_at is None:
            raise ValueError("f-pndm: a warm-up step needs alpha_at for its midpoint times")
        t_cur = _times(t_cur, x)
        t_next = _times(t_next, x)
        t_mid = (t_cur + t_next) / 2
        a_mid = _ab(alpha_at(t_mid), x)
        x2 = _transfer(x, e1, a, a_mid, clip)
        e2 = eval_eps(x2, t_mid, a_mid)
        x3 = _transfer(x, e2, a, a_mid, clip)
        e3 = eval_eps(x3, t_mid, a_mid)
        x4 = _transfer(x, e3, a, a_next, clip)
        e4 = eval_eps(x4, t_next, a_next)
        return (e1 + 2 * e2 + 2 * e3 + e4) / 6

    def _multistep_eps(self, ds):
        return (55 * ds[0] - 59 * ds[1] + 37 * ds[2] - 9 * ds[3]) / 24


def _times(t, x):
    """Original timesteps as a (B,) float64 tensor on x's device."""
    t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


# ----------------------------------------------------------------------------- registry, NFE
@dataclass(frozen=True)
class SolverSpec:
    """One ``--solver`` name: what it is and how many network calls it makes.

    :param name: the ``--solver`` value.
    :param summary: a few words for ``--help``.
    :param solver: the solver-interface class, or None for ``ddpm`` (the stochastic
        ``GaussianDiffusion.ddpm_step``; its DDIM is ``GaussianDiffusion.ddim_step``).
    :param warmup_steps, warmup_extra: steps with extra network calls at the start, and the extra
        calls each makes (S-/F-PNDM's classical warm-up; 0 for the others).
    """

    name: str
    summary: str
    solver: Optional[type] = None
    warmup_steps: int = 0
    warmup_extra: int = 0


# Every ``--solver`` value, in the order the flags, the loop and the tables list them.
REGISTRY = (
    SolverSpec("ddim", "DDIM", DDIM),
    SolverSpec("ddpm", "ancestral DDPM"),
    SolverSpec("dpm++2m", "DPM-Solver++(2M)", DPMSolverPP2M),
    SolverSpec("ipndm", "iPNDM", IPNDM),
    SolverSpec("s-pndm", "S-PNDM", SPNDM, SPNDM.warmup_steps, SPNDM.warmup_extra),
    SolverSpec("f-pndm", "F-PNDM", FPNDM, FPNDM.warmup_steps, FPNDM.warmup_extra),
)
_SPECS = {spec.name: spec for spec in REGISTRY}
SOLVER_NAMES = tuple(spec.name for spec in REGISTRY)
# The deterministic ones, with a solver-interface object (:func:`get_solver`).
SOLVERS = tuple(spec.name for spec in REGISTRY if spec.solver is not None)


def solver_spec(name):
    """The :class:`SolverSpec` of a ``--solver`` name (ValueError naming the choices otherwise)."""
    if name not in _SPECS:
        raise ValueError(f"solver must be one of {SOLVER_NAMES}, got {name!r}")
    return _SPECS[name]


def get_solver(name):
    """The solver object for a ``--solver`` name (``ddpm`` is the ancestral ``ddpm_step``)."""
    if name not in _SPECS or _SPECS[name].solver is None:
        hint = " (the stochastic 'ddpm' sampler is GaussianDiffusion.ddpm_step)" if name == "ddpm" else ""
        raise ValueError(f"solver must be one of {SOLVERS}, got {name!r}{hint}")
    return _SPECS[name].solver()


def nfe(solver, steps, *, ends_clean=False):
    """Network evaluations of a run of ``steps`` loop steps (one network call each, plus warm-up).

    ddim, ddpm, dpm++2m, ipndm: steps. s-pndm: steps + 1. f-pndm: steps + 3 min(steps, 3).
    ``ends_clean``: the last step's target is alpha_bar = 1 (the ADM loop; upstream's PNDM grid
    ends at alpha_bar[0] instead): a warm-up step there is a plain DDIM step (relevant only when
    steps <= warm-up length). Counts exactly as the DDPM-backbone repo does for its grid: its
    "S" (``--sample_speed``) is ``len(pndm_time_pairs(S))`` = S - 1 steps when S divides T.
    """
    name = solver if isinstance(solver, str) else solver.name
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if name not in _SPECS:
        raise ValueError(f"unknown solver {name!r}")
    s = _SPECS[name]
    extra = min(steps, s.warmup_steps) * s.warmup_extra
    if ends_clean and 0 < steps <= s.warmup_steps:
        extra -= s.warmup_extra
    return steps + extra
