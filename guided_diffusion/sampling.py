"""The one sampling-loop driver: DDIM and DDPM (ancestral), each with an optional time shift.

The loop walks explicit pairs of respaced indices (i, i - 1) from S - 1 down to 0. At every step
after the first, if a :class:`~guided_diffusion.time_shift.TimeShift` is set and the step is
eligible, the rule picks each sample's target noise level from the current state (TS-DPM
Algorithm 1); the step function then moves x from the nominal level of step i to that target.
The next step starts again from the nominal grid (``timestep_map[i - 1]``).

Nothing is kept between steps but the current state: memory per step does not depend on S.
Host-side loop variables are plain ints, so a step does no device-to-host synchronisation.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from .time_shift import TimeShift, is_eligible, shift_target

SAMPLER_KINDS = ("ddim", "ddpm")


@dataclass(frozen=True)
class Sampler:
    """Every setting of how the reverse process is walked; the schedule lives in the diffusion.

    :param kind: "ddim" (Song et al. eq. 12 with ``eta``) or "ddpm" (ancestral, Ho et al. alg. 2).
    :param eta: DDIM's eta (0: deterministic); must be 0 for "ddpm".
    :param clip_denoised: clip the predicted x0 to [-1, 1] at every step.
    :param time_shift: a :class:`~guided_diffusion.time_shift.TimeShift`, or None for plain sampling.

    Built from the command-line settings in one place: :func:`guided_diffusion.sample_run.sampler_from_configs`.
    """

    kind: str = "ddim"
    eta: float = 0.0
    clip_denoised: bool = True
    time_shift: Optional[TimeShift] = None

    def __post_init__(self):
        if self.kind not in SAMPLER_KINDS:
            raise ValueError(f"sampler kind must be one of {SAMPLER_KINDS}, got {self.kind!r}")
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
    :param sampler: a :class:`Sampler` (kind, eta, clipping, time shift).
    :param noise: optional x_T (B, C, H, W); drawn with ``torch.randn`` otherwise.
    :param noise_fn: ``noise_fn(step, like) -> (B, C, H, W)`` standard normal draws for step
        number ``step`` (0 = first step); default ``torch.randn_like(like)``. It is called only when
        the step is stochastic (DDPM before the last step, DDIM with eta > 0).
    :yield: dict with "sample" and "pred_xstart" (B, C, H, W); "t" the respaced index and
        "timestep" the original timestep of the step (ints); "shifted_timesteps" (B,) the
        original timesteps tau_b the shift matched, and "target_alphas_cumprod" (B,) the
        alpha_bar each sample was moved to, or None for both where the step was not shifted.
    """
    if not isinstance(sampler, Sampler):
        raise TypeError(f"sampler must be a sampling.Sampler, got {type(sampler).__name__}")
    if device is None:
        device = _default_device(model, noise)
    ts = sampler.time_shift
    clip_denoised = sampler.clip_denoised
    x = noise if noise is not None else torch.randn(*shape, device=device)
    batch = x.shape[0]
    num_steps = diffusion.num_timesteps
    timestep_map = diffusion.timestep_map
    base_alphas_cumprod = diffusion.table("base_alphas_cumprod", x.device) if ts is not None else None
    if noise_fn is None:
        noise_fn = lambda step, like: torch.randn_like(like)  # noqa: E731
    step_fn = diffusion.ddim_step if sampler.kind == "ddim" else diffusion.ddpm_step
    extra = {"eta": sampler.eta} if sampler.kind == "ddim" else {}

    indices = range(num_steps - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=sampler.kind, leave=False)
    for step, i in enumerate(indices):
        cur = timestep_map[i]
        nxt = timestep_map[i - 1] if i > 0 else -1
        t = torch.full((batch,), i, device=x.device, dtype=torch.long)
        # Shift the target of this step (TS-DPM Alg. 1, per sample).
        shift = None
        if ts is not None and is_eligible(ts, cur, nxt, first_step=step == 0):
            shift = shift_target(x, base_alphas_cumprod, ts=ts, cur=cur, nxt=nxt, num_steps=num_steps)
        x_in = x
        with torch.no_grad():
            out = step_fn(
                model,
                x_in,
                t,
                target_alphas_cumprod=None if shift is None else shift.target_alphas_cumprod,
                clip_denoised=clip_denoised,
                denoised_fn=denoised_fn,
                cond_fn=cond_fn,
                model_kwargs=model_kwargs,
                draw_noise=lambda: noise_fn(step, x_in),
                is_last=i == 0,
                **extra,
            )
        out["t"] = i
        out["timestep"] = cur
        out["shifted_timesteps"] = None if shift is None else shift.timesteps
        out["target_alphas_cumprod"] = None if shift is None else shift.target_alphas_cumprod
        yield out
        x = out["sample"]


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
