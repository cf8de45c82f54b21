"""The one sampling-loop driver: DDIM, DDPM and the few-step solvers, each with the time shift
and the training-free corrections.

The loop walks explicit pairs of respaced indices (i, i - 1) from S - 1 down to 0; at each step
(original timestep ``cur = timestep_map[i]``, nominal next ``timestep_map[i - 1]``) it does, in
this fixed order (docs/solvers.md):

1. the network once at ``cur`` (epsilon scaling divides its eps by lambda_i, before x0_hat:
   ``Corrections.scaled_model``);
2. the predictions x0_hat (clipped) and eps;
3. the time shift, on eligible steps after the first: the rule picks each sample's target noise
   level (TS-DPM Algorithm 1; rules "adm", "pndm", "offset" read x_t, "adm-data" also x0_hat);
4. the update to that target: DDIM (``GaussianDiffusion.ddim_step``), ancestral DDPM
   (``ddpm_step``) or a solver of :mod:`guided_diffusion.sampler.solvers` (DPM-Solver++(2M), iPNDM,
   S-/F-PNDM, with their fixed-size history);
5. DCW on the new state.

The next step starts again from the nominal grid ("target-only": the shift moves only the target
of its step; the solvers' histories keep what the network said at the nominal times). Nothing is
kept between steps but the current state (and a solver's fixed-size history): memory per step
does not depend on S. Host-side loop variables are plain ints, so a step does no device-to-host
synchronisation.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch

from .corrections import Corrections
from .solvers import SOLVER_NAMES, eps_from_x0, floor_alpha_at, get_solver, x0_from_eps
from .time_shift import TimeShift, is_eligible, needs_prediction, shift_target, target_index


@dataclass(frozen=True)
class Sampler:
    """Every setting of how the reverse process is walked; the schedule lives in the diffusion.

    :param kind: "ddim" (Song et al. eq. 12 with ``eta``), "ddpm" (ancestral, Ho et al. alg. 2), or a
        deterministic solver: "dpm++2m", "ipndm", "s-pndm", "f-pndm" (:mod:`guided_diffusion.sampler.solvers`).
    :param eta: DDIM's eta (0: deterministic); must be 0 for the others.
    :param clip_denoised: clip the predicted x0 to [-1, 1] at every step.
    :param time_shift: a :class:`~guided_diffusion.sampler.time_shift.TimeShift`, or None for plain sampling.
    :param corrections: epsilon scaling and DCW (:class:`~guided_diffusion.sampler.corrections.Corrections`;
        off by default).

    Built from the command-line settings in one place: :func:`guided_diffusion.jobs.sample.sampler_from_configs`.
    """

    kind: str = "ddim"
    eta: float = 0.0
    clip_denoised: bool = True
    time_shift: Optional[TimeShift] = None
    corrections: Corrections = field(default_factory=Corrections)

    def __post_init__(self):
        if self.kind not in SOLVER_NAMES:
            raise ValueError(f"sampler kind must be one of {SOLVER_NAMES}, got {self.kind!r}")
        if self.eta < 0 or (self.kind != "ddim" and self.eta != 0):
            raise ValueError(f"eta must be >= 0 and is for DDIM only, got {self.eta} with {self.kind}")

    def describe(self):
        """A short description for logs and error messages."""
        text = self.kind.upper()
        if self.kind == "ddim" and self.eta:
            text += f" eta={self.eta}"
        ts = self.time_shift
        if ts is not None:
            text += f" time shift rule={ts.rule} window={ts.window} cutoff={ts.cutoff}"
        c = self.corrections
        if c.es_active:
            text += f" eps_scale={c.eps_scale} eps_scale_k={c.eps_scale_k}"
        if c.dcw_active:
            text += f" dcw_low={c.dcw_low} dcw_high={c.dcw_high}"
        return text


def _default_device(model, noise):
    if noise is not None:
        return noise.device
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def sample_loop_progressive(
    diffusion,
    model,
    shape,
    sampler,
    *,
    noise=None,
    denoised_fn=None,
    cond_fn=None,
    model_kwargs=None,
    device=None,
    progress=False,
    noise_fn=None,
):
    """Run the reverse process, yielding after every step.

    :param diffusion: a (possibly respaced) ``GaussianDiffusion``.
    :param model: callable ``(x, t_original, **model_kwargs) -> output`` (B, C or 2C, H, W).
    :param shape: (B, C, H, W) of the samples.
    :param sampler: a :class:`Sampler` (kind, eta, clipping, time shift, corrections).
    :param noise: optional x_T (B, C, H, W); drawn with ``torch.randn`` otherwise.
    :param noise_fn: ``noise_fn(step, like) -> (B, C, H, W)`` standard normal draws for step
        number ``step`` (0 = first step); default ``torch.randn_like(like)``. It is called only when
        the step is stochastic (DDPM before the last step, DDIM with eta > 0).
    :yield: dict with "sample" and "pred_xstart" (B, C, H, W); "t" the respaced index and
        "timestep" the original timestep of the step (ints); "shifted_timesteps" (B,) the
        original timesteps tau_b the shift matched, and "target_alphas_cumprod" (B,) the
        alpha_bar each sample was moved to, or None for both where the step was not shifted;
        "nfe" the network evaluations of this step.
    """
    if not isinstance(sampler, Sampler):
        raise TypeError(f"sampler must be a sampling.Sampler, got {type(sampler).__name__}")
    if device is None:
        device = _default_device(model, noise)
    ts = sampler.time_shift
    corr = sampler.corrections
    x = noise if noise is not None else torch.randn(*shape, device=device)
    batch, channels = x.shape[0], x.shape[1]
    num_steps = diffusion.num_timesteps
    if corr.active:
        corr.validate(tuple(x.shape[2:]), num_steps)
    if corr.es_active and diffusion.model_mean_type.name != "EPSILON":
        raise ValueError("--eps_scale/--eps_scale_k need an eps-predicting model (not --predict_xstart)")
    timestep_map = diffusion.timestep_map
    base_alphas_cumprod = diffusion.table("base_alphas_cumprod", x.device) if ts is not None else None
    if noise_fn is None:
        noise_fn = lambda step, like: torch.randn_like(like)  # noqa: E731
    kind = sampler.kind
    solver = get_solver(kind) if kind not in ("ddim", "ddpm") else None
    state = solver.init_state() if solver is not None else None
    alphas_cumprod = diffusion.table("alphas_cumprod", x.device)
    alphas_cumprod_prev = diffusion.table("alphas_cumprod_prev", x.device)
    post_rule = needs_prediction(ts)
    grid_target = bool(getattr(diffusion, "shift_uses_grid", False))

    indices = range(num_steps - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=kind, leave=False)
    for step, i in enumerate(indices):
        cur = timestep_map[i]
        nxt = timestep_map[i - 1] if i > 0 else -1
        t = torch.full((batch,), i, device=x.device, dtype=torch.long)
        net = corr.scaled_model(model, i, channels)
        eligible = ts is not None and is_eligible(ts, cur, nxt, first_step=step == 0)
        shift = None
        if eligible and not post_rule:  # rules that read x_t only: chosen before the network call
            shift = shift_target(x, base_alphas_cumprod, ts=ts, cur=cur, nxt=nxt, num_steps=num_steps,
                                 grid_target=grid_target)
        x_in = x
        nfe = 1
        with torch.no_grad():
            pred = diffusion.step_predictions(kind, net, x_in, t, clip_denoised=sampler.clip_denoised,
                                              denoised_fn=denoised_fn, cond_fn=cond_fn, model_kwargs=model_kwargs)
            if eligible and post_rule:
                shift = shift_target(x, base_alphas_cumprod, ts=ts, cur=cur, nxt=nxt, num_steps=num_steps,
                                     x0_hat=pred["pred_xstart"], grid_target=grid_target)
            target = None if shift is None else shift.target_alphas_cumprod
            common = dict(target_alphas_cumprod=target, pred=pred, draw_noise=lambda: noise_fn(step, x_in),
                          is_last=i == 0)
            if kind == "ddim":
                out = diffusion.ddim_step(net, x_in, t, eta=sampler.eta, **common)
            elif kind == "ddpm":
                out = diffusion.ddpm_step(net, x_in, t, cond_fn=cond_fn, model_kwargs=model_kwargs, **common)
            else:
                a_cur = alphas_cumprod[i]
                a_next = alphas_cumprod_prev[i] if target is None else target
                x0 = pred["pred_xstart"]
                eps = eps_from_x0(x_in, x0, a_cur)
                extra = {}
                if kind in ("s-pndm", "f-pndm"):
                    extra = _pndm_stage_arguments(diffusion, net, x_in, cur, nxt, shift, ts, num_steps,
                                                  sampler.clip_denoised, denoised_fn, model_kwargs, cond_fn)
                    nfe += solver.extra_evals(state, ends_clean=i == 0)
                sample, state = solver.step(state, x_in, eps, x0, a_cur, a_next, is_last=i == 0,
                                            num_steps=num_steps, clip_denoised=sampler.clip_denoised, **extra)
                out = {"sample": sample, "pred_xstart": x0}
        if corr.dcw_active:
            out["sample"] = corr.correct(out["sample"], out["pred_xstart"], alphas_cumprod[i])
        out["t"] = i
        out["timestep"] = cur
        out["shifted_timesteps"] = None if shift is None else shift.timesteps
        out["target_alphas_cumprod"] = target
        out["nfe"] = nfe
        yield out
        x = out["sample"]


def _pndm_stage_arguments(diffusion, net, x_cur, cur, nxt, shift, ts, num_steps, clip_denoised, denoised_fn,
                          model_kwargs, cond_fn=None):
    """t_cur, t_next, eval_eps and alpha_at for the S-/F-PNDM warm-up stages (extra network calls).

    ``eval_eps(x, t, a)`` calls the network at float ORIGINAL timesteps ``t`` (B,) and returns eps
    processed as the main call's (epsilon scaling through ``net``, x0 clipped, eps re-derived, and
    with ``cond_fn`` the score-form guidance eps - sqrt(1 - a) * cond_fn(x, t)).
    ``t_next`` is the time of the step's target: nominal ``nxt``, or with the time shift the
    target index (``time_shift.target_index``; below 0 = clean).
    """
    base = diffusion.table("base_alphas_cumprod", x_cur.device)
    T = base.shape[0]
    if shift is None:
        t_next = float(nxt)
    else:
        idx = target_index(ts, shift.timesteps, cur, nxt, num_steps, T, getattr(diffusion, "shift_uses_grid", False))
        t_next = (idx if ts.rule == "pndm" else idx.clamp(min=-1)).double()
    scale = 1000.0 / T if diffusion.rescale_timesteps else 1.0
    kwargs = model_kwargs or {}

    def eval_eps(x, t, a):
        eps = net(x, t * scale, **kwargs)[:, : x.shape[1]]
        x0 = x0_from_eps(x, eps, a)
        if denoised_fn is not None:
            x0 = denoised_fn(x0)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        eps = eps_from_x0(x, x0, a)
        if cond_fn is not None:
            a_t = torch.as_tensor(a, dtype=torch.float64, device=x.device)
            c = torch.sqrt(1 - a_t).to(x.dtype)
            c = c.reshape((-1,) + (1,) * (x.ndim - 1)) if c.ndim else c
            eps = eps - c * cond_fn(x, t * scale, **kwargs)
        return eps

    return dict(t_cur=float(cur), t_next=t_next, eval_eps=eval_eps, alpha_at=floor_alpha_at(base))


def final_sample(progressive):
    """Exhaust a progressive loop and return its last "sample"."""
    final = None
    for final in progressive:
        pass
    return final["sample"]


class UpstreamLoopsMixin:
    """guided-diffusion's loop methods on the diffusion object, for code written against its API.

    Each builds a :class:`Sampler` from its keywords and calls :func:`sample_loop_progressive`.
    ``time_shift=None`` (the default) uses ``self.upstream_time_shift``: the shift that TS-DPM's
    factory flags (``do_time_shift``, ``window``, ``cutoff``, ``ts_rule``) ask for, None otherwise.
    """

    upstream_time_shift = None

    def _upstream_sampler(self, kind, clip_denoised, eta, time_shift):
        ts = self.upstream_time_shift if time_shift is None else time_shift
        return Sampler(kind=kind, eta=eta, clip_denoised=clip_denoised, time_shift=ts)

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                      model_kwargs=None, device=None, progress=False, time_shift=None, noise_fn=None):
        """Ancestral sampling (TS-DDPM with a time shift); returns the final (B, C, H, W)."""
        return final_sample(self.p_sample_loop_progressive(
            model, shape, noise=noise, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
            cond_fn=cond_fn, model_kwargs=model_kwargs, device=device, progress=progress,
            time_shift=time_shift, noise_fn=noise_fn))

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                  cond_fn=None, model_kwargs=None, device=None, progress=False,
                                  time_shift=None, noise_fn=None):
        """Yield one dict per ancestral step; see :func:`sample_loop_progressive`."""
        return sample_loop_progressive(
            self, model, shape, self._upstream_sampler("ddpm", clip_denoised, 0.0, time_shift), noise=noise,
            denoised_fn=denoised_fn, cond_fn=cond_fn, model_kwargs=model_kwargs, device=device,
            progress=progress, noise_fn=noise_fn)

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                         model_kwargs=None, device=None, progress=False, eta=0.0, time_shift=None, noise_fn=None):
        """DDIM sampling (TS-DDIM with a time shift); returns the final (B, C, H, W)."""
        return final_sample(self.ddim_sample_loop_progressive(
            model, shape, noise=noise, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
            cond_fn=cond_fn, model_kwargs=model_kwargs, device=device, progress=progress, eta=eta,
            time_shift=time_shift, noise_fn=noise_fn))

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                     cond_fn=None, model_kwargs=None, device=None, progress=False,
                                     eta=0.0, time_shift=None, noise_fn=None):
        """Yield one dict per DDIM step; see :func:`sample_loop_progressive`."""
        return sample_loop_progressive(
            self, model, shape, self._upstream_sampler("ddim", clip_denoised, eta, time_shift), noise=noise,
            denoised_fn=denoised_fn, cond_fn=cond_fn, model_kwargs=model_kwargs, device=device,
            progress=progress, noise_fn=noise_fn)
