"""Gaussian diffusion: coefficient tables and one-step math (no loops over time live here).

Ho et al. 2020 (DDPM), Nichol & Dhariwal 2021 (learned variances, cosine schedule), Song et al.
2021 (DDIM). Upstream method names and semantics of guided-diffusion are kept, so code written
against its API keeps working; the loops are in :mod:`guided_diffusion.sampler.loop` (the loop driver
and the mixin that gives this class upstream's ``p_sample_loop`` / ``ddim_sample_loop`` methods).

Index spaces. ``t`` arguments are (B,) int64 **respaced** indices 0..S-1 into this object's tables
(``S = num_timesteps``); the network receives the **original** timestep ``timestep_map[t]``
(optionally rescaled to 0..1000). ``base_alphas_cumprod`` is the (T,) table of the un-respaced
process, which the time shift searches.
"""

import enum

import numpy as np
import torch

from .sampler.loop import UpstreamLoopsMixin
from .sampler.solvers import ddim_update
from .training_losses import TrainingLossesMixin, input_perturbation_schedule


class ModelMeanType(enum.Enum):
    """What the network predicts."""

    PREVIOUS_X = enum.auto()  # x_{t-1}
    START_X = enum.auto()  # x_0
    EPSILON = enum.auto()  # epsilon


class ModelVarType(enum.Enum):
    """How the reverse-process variance is chosen."""

    LEARNED = enum.auto()  # the network outputs log variance
    FIXED_SMALL = enum.auto()  # posterior variance beta~_t
    FIXED_LARGE = enum.auto()  # beta_t (beta~_1 at t = 0)
    LEARNED_RANGE = enum.auto()  # v in [-1, 1] interpolates log beta~_t .. log beta_t

    def is_learned(self):
        return self in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)


class LossType(enum.Enum):
    MSE = enum.auto()
    RESCALED_MSE = enum.auto()  # MSE plus the VB term rescaled by S / 1000
    KL = enum.auto()
    RESCALED_KL = enum.auto()

    def is_vb(self):
        return self in (LossType.KL, LossType.RESCALED_KL)

    is_kl = is_vb


class _TimestepMappedModel:
    """Calls ``model(x, timestep_map[t] (* 1000 / T if rescaled), **kw)`` for respaced ``t``."""

    def __init__(self, model, diffusion):
        self.model = model
        self.diffusion = diffusion

    def __call__(self, x, ts, **kwargs):
        d = self.diffusion
        new_ts = d.table("timestep_map", ts.device)[ts]
        if d.rescale_timesteps:
            new_ts = new_ts.float() * (1000.0 / d.original_num_steps)
        return self.model(x, new_ts, **kwargs)


class GaussianDiffusion(TrainingLossesMixin, UpstreamLoopsMixin):
    """Utilities for training and sampling diffusion models.

    :param betas: (S,) float64 betas of this (possibly respaced) process.
    :param model_mean_type, model_var_type, loss_type: see the enums above.
    :param rescale_timesteps: feed the network t * 1000 / T instead of integer t.
    :param input_pertub: DDPM-IP gamma (training only; upstream's spelling).
    :param perturb_schedule_type, perturb_cutoff: TS-DPM-ADM's per-timestep gamma schedule.
    :param timestep_map: original timestep of each respaced index (default: identity).
    :param base_alphas_cumprod: (T,) alpha_bar of the base process (default: this one's).

    The object holds schedule tables and one-step math only; sampler settings (time shift, eta,
    ...) are arguments of the loops. ``upstream_time_shift`` (None unless the flat upstream
    factory was given ``do_time_shift=True``) is read only by the upstream-named loop methods.
    """

    upstream_time_shift = None

    def __init__(
        self,
        *,
        betas,
        model_mean_type,
        model_var_type,
        loss_type,
        rescale_timesteps=False,
        input_pertub=0.0,
        perturb_schedule_type="linear",
        perturb_cutoff=0,
        timestep_map=None,
        base_alphas_cumprod=None,
        original_num_steps=None,
    ):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps
        self.input_pertub = float(input_pertub)

        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])
        self.timestep_map = (
            list(range(self.num_timesteps)) if timestep_map is None else [int(t) for t in timestep_map]
        )
        self.original_num_steps = original_num_steps or self.num_timesteps

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.base_alphas_cumprod = (
            self.alphas_cumprod if base_alphas_cumprod is None else np.asarray(base_alphas_cumprod, np.float64)
        )
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # Posterior q(x_{t-1} | x_t, x_0) (Ho et al. eq. 6-7).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # log(0) at t = 0 is replaced by the t = 1 value (upstream clipping).
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
            if self.num_timesteps > 1
            else np.maximum(self.posterior_variance, 1e-20)
        )
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )
        fixed_large = np.append(self.posterior_variance[1], betas[1:]) if self.num_timesteps > 1 else betas
        self.fixed_large_variance = fixed_large
        self.fixed_large_log_variance = np.log(fixed_large)
        self.log_betas = np.log(betas)
        # Indexed by original timestep, then gathered for the kept steps.
        self.input_perturb_scale = input_perturbation_schedule(
            self.input_pertub, self.original_num_steps, perturb_schedule_type, perturb_cutoff
        )[self.timestep_map]
        self._device_tables = {}

    # ----------------------------------------------------------------- tables on the device
    def table(self, name, device):
        """A table as a float64 (int64 for timestep_map) tensor on ``device``, cached."""
        key = (name, str(device))
        tab = self._device_tables.get(key)
        if tab is None:
            value = getattr(self, name)
            if name == "timestep_map":
                tab = torch.tensor(value, dtype=torch.long, device=device)
            else:
                tab = torch.from_numpy(np.ascontiguousarray(value)).to(device)
            self._device_tables[key] = tab
        return tab

    def _extract(self, name, t, broadcast_shape):
        """``table[t]`` as float32, shaped (B, 1, ..., 1) and expanded to ``broadcast_shape``."""
        res = self.table(name, t.device)[t].float()
        return res.reshape(res.shape + (1,) * (len(broadcast_shape) - res.ndim)).expand(broadcast_shape)

    def _wrap_model(self, model):
        if isinstance(model, _TimestepMappedModel):
            return model
        return _TimestepMappedModel(model, self)

    # ----------------------------------------------------------------- forward process
    def q_mean_variance(self, x_start, t):
        """Mean, variance and log variance of q(x_t | x_0), each broadcast to x_start's shape."""
        mean = self._extract("sqrt_alphas_cumprod", t, x_start.shape) * x_start
        variance = self._extract("alphas_cumprod", t, x_start.shape)
        variance = 1.0 - variance
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start, t, noise=None):
        """Sample x_t ~ q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I) (Ho et al. eq. 4)."""
        if noise is None:
            noise = torch.randn_like(x_start)
        return (
            self._extract("sqrt_alphas_cumprod", t, x_start.shape) * x_start
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x_start.shape) * noise
        )

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0) (Ho et al. eq. 6-7)."""
        mean = (
            self._extract("posterior_mean_coef1", t, x_t.shape) * x_start
            + self._extract("posterior_mean_coef2", t, x_t.shape) * x_t
        )
        variance = self._extract("posterior_variance", t, x_t.shape)
        log_variance = self._extract("posterior_log_variance_clipped", t, x_t.shape)
        return mean, variance, log_variance

    # ----------------------------------------------------------------- reverse process
    def _predict_xstart_from_eps(self, x_t, t, eps):
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t.shape) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t.shape) * eps
        )

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t.shape) * x_t - pred_xstart
        ) / self._extract("sqrt_recipm1_alphas_cumprod", t, x_t.shape)

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        return (
            self._extract("posterior_mean_coef1", t, x_t.shape).reciprocal() * xprev
            - (
                self._extract("posterior_mean_coef2", t, x_t.shape)
                / self._extract("posterior_mean_coef1", t, x_t.shape)
            )
            * x_t
        )

    def model_predictions(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        """Run the network once and interpret its output (no posterior arithmetic).

        :param x: (B, C, H, W) state at respaced step ``t`` (B,).
        :return: dict with "model_output" (B, C, H, W) mean part, "var_values" (B, C, H, W) or
            None (learned variances), "pred_xstart" (B, C, H, W) processed by ``denoised_fn`` and
            clipped to [-1, 1] when ``clip_denoised``.
        """
        model_kwargs = model_kwargs or {}
        channels = x.shape[1]
        model_output = self._wrap_model(model)(x, t, **model_kwargs)
        var_values = None
        if self.model_var_type.is_learned():
            if model_output.shape[1] != 2 * channels:
                raise ValueError(
                    f"learned variance needs {2 * channels} output channels, model gave "
                    f"{model_output.shape[1]} (check learn_sigma)"
                )
            model_output, var_values = torch.split(model_output, channels, dim=1)

        def process_xstart(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            pred_xstart = process_xstart(self._predict_xstart_from_xprev(x, t, model_output))
        elif self.model_mean_type == ModelMeanType.START_X:
            pred_xstart = process_xstart(model_output)
        else:
            # x0 = sqrt(1/ab) x - sqrt(1/ab - 1) eps (Ho et al. eq. 4 solved for x0), in two passes
            sr = self._per_sample(self.table("sqrt_recip_alphas_cumprod", t.device)[t], x)
            srm1 = self._per_sample(self.table("sqrt_recipm1_alphas_cumprod", t.device)[t], x)
            x0 = torch.addcmul(x * sr, model_output, -srm1)
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            pred_xstart = x0.clamp_(-1, 1) if clip_denoised else x0
        return {"model_output": model_output, "var_values": var_values, "pred_xstart": pred_xstart}

    def _nominal_log_variance(self, var_values, t, shape):
        """Log variance of p(x_{t-1} | x_t) for the nominal step, broadcast to ``shape``."""
        if self.model_var_type == ModelVarType.LEARNED:
            return var_values
        if self.model_var_type == ModelVarType.LEARNED_RANGE:
            min_log = self._extract("posterior_log_variance_clipped", t, shape)
            max_log = self._extract("log_betas", t, shape)
            frac = (var_values + 1) / 2
            return frac * max_log + (1 - frac) * min_log
        if self.model_var_type == ModelVarType.FIXED_LARGE:
            return self._extract("fixed_large_log_variance", t, shape)
        return self._extract("posterior_log_variance_clipped", t, shape)

    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        """Apply the model to get p(x_{t-1} | x_t) and the predicted x_0.

        :return: dict of (B, C, H, W) tensors "mean", "variance", "log_variance", "pred_xstart".
        """
        pred = self.model_predictions(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        log_variance = self._nominal_log_variance(pred["var_values"], t, x.shape)
        if self.model_var_type.is_learned():
            variance = torch.exp(log_variance)
        elif self.model_var_type == ModelVarType.FIXED_LARGE:
            variance = self._extract("fixed_large_variance", t, x.shape)
        else:
            variance = self._extract("posterior_variance", t, x.shape)
        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            mean = pred["model_output"]
        else:
            mean, _, _ = self.q_posterior_mean_variance(pred["pred_xstart"], x, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred["pred_xstart"],
            "var_values": pred["var_values"],
        }

    def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Classifier guidance on the mean: mu + Sigma * grad log p(y | x_t) (Dhariwal & Nichol alg. 1)."""
        gradient = self._wrap_model(cond_fn)(x, t, **(model_kwargs or {}))
        return p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()

    def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Classifier guidance on the score: eps - sqrt(1 - ab_t) * grad (Dhariwal & Nichol alg. 2).

        Returns a copy of ``p_mean_var`` with "pred_xstart" and "mean" recomputed.
        """
        alpha_bar = self._extract("alphas_cumprod", t, x.shape)
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * self._wrap_model(cond_fn)(x, t, **(model_kwargs or {}))
        out = dict(p_mean_var)
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(out["pred_xstart"], x, t)
        return out

    # ----------------------------------------------------------------- one sampling step
    def step_predictions(self, kind, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None,
                         model_kwargs=None):
        """The network's predictions that one step of sampler ``kind`` starts from (one network call).

        Ancestral ("ddpm") steps apply classifier guidance to the mean later (``ddpm_step``); the
        others use the score form here (eps - sqrt(1 - a) grad, Dhariwal & Nichol alg. 2).
        :return: dict with at least "pred_xstart" (B, C, H, W), "model_output", "var_values".
        """
        if cond_fn is not None and kind != "ddpm":
            out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
            return self.condition_score(cond_fn, out, x, t, model_kwargs)
        return self.model_predictions(model, x, t, clip_denoised, denoised_fn, model_kwargs)

    @staticmethod
    def _is_last(t, is_last):
        """Whether this is the final step (respaced t == 0); reads t[0] only if not told."""
        return bool(is_last) if is_last is not None else int(t.reshape(-1)[0]) == 0

    def _per_sample(self, c, x):
        """(B,) float64 coefficients -> (B, 1, ..., 1) in x's dtype."""
        return c.to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))

    def ddim_step(
        self,
        model,
        x,
        t,
        *,
        target_alphas_cumprod=None,
        eta=0.0,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        draw_noise=None,
        is_last=None,
        pred=None,
    ):
        """One DDIM update (Song et al. eq. 12) from respaced step ``t`` to a target noise level.

        :param x: (B, C, H, W) state at respaced step ``t`` (B,); all t equal within a batch.
        :param target_alphas_cumprod: (B,) float64 alpha_bar a' of the state to produce, per sample
            (time shift); None means the nominal ``alphas_cumprod_prev[t]``.
        :param eta: 0 for deterministic DDIM; 1 gives DDPM's posterior variance.
        :param draw_noise: callable returning a (B, C, H, W) standard normal; called only when
            eta > 0 and this is not the last step.
        :param is_last: whether t == 0 (the loops pass it to avoid a device read; None reads t[0]).
        :param pred: this step's ``step_predictions("ddim", ...)`` when already made (the network is
            then not called again).
        :return: {"sample", "pred_xstart"}.

        The update is :func:`guided_diffusion.sampler.solvers.ddim_update` (Song et al. eq. 12, with
        eps re-derived from the clipped x0; per-sample float64 coefficients; a target noisier than
        the current state, a' < a, re-noises x0 deterministically, where upstream computed
        0 * NaN = NaN, even for eta = 0).
        """
        if pred is None:
            pred = self.step_predictions("ddim", model, x, t, clip_denoised, denoised_fn, cond_fn, model_kwargs)
        pred_xstart = pred["pred_xstart"]
        a = self.table("alphas_cumprod", t.device)[t]
        if target_alphas_cumprod is None:
            a_next = self.table("alphas_cumprod_prev", t.device)[t]
        else:
            a_next = target_alphas_cumprod.to(device=a.device, dtype=a.dtype)
        stochastic = eta > 0 and not self._is_last(t, is_last)
        if stochastic and draw_noise is None:
            raise ValueError("ddim_step: eta > 0 needs draw_noise (a callable returning a standard normal)")
        sample = ddim_update(x, pred_xstart, a, a_next, eta=eta, draw_noise=draw_noise if stochastic else None)
        return {"sample": sample, "pred_xstart": pred_xstart}

    def ddpm_step(
        self,
        model,
        x,
        t,
        *,
        target_alphas_cumprod=None,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        draw_noise=None,
        is_last=None,
        pred=None,
    ):
        """One ancestral step x_{t-1} ~ p(x_{t-1} | x_t) (Ho et al. alg. 2), optionally retargeted.

        :param target_alphas_cumprod: (B,) float64 alpha_bar a' of the state to produce (TS-DDPM);
            None gives upstream's ``p_sample`` (same formulas; evaluated as per-sample
            coefficients, equal to upstream's arithmetic up to float32 rounding).
        :param draw_noise: callable returning a (B, C, H, W) standard normal (not called at t = 0).
        :param is_last: whether t == 0 (None reads t[0]).
        :param pred: this step's ``model_predictions`` when already made (no second network call).

        Shifted step from a = alpha_bar_t to a' (per sample), with x0 the (clipped) prediction:
        if a' >= a, the posterior q(x_{a'} | x_t, x0) between the two noise levels:
        beta' = 1 - a/a', mean = beta' sqrt(a') / (1-a) * x0 + (1-a') sqrt(1-beta') / (1-a) * x_t,
        and the variance by ``model_var_type``: FIXED_SMALL beta' (1-a')/(1-a); FIXED_LARGE beta';
        LEARNED_RANGE keeps the network's interpolation fraction between those two logs;
        LEARNED keeps the network's log variance. If a' < a (target noisier than x_t) there is no
        posterior: the step re-noises deterministically, x' = sqrt(a') x0 + sqrt(1-a') eps.
        """
        if pred is None:
            pred = self.model_predictions(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        pred_xstart, v = pred["pred_xstart"], pred["var_values"]
        c_x0, c_x, min_log, max_log = self._posterior_coefficients(t, target_alphas_cumprod)
        if target_alphas_cumprod is None and self.model_mean_type == ModelMeanType.PREVIOUS_X:
            mean = pred["model_output"]
        else:
            mean = torch.addcmul(x * self._per_sample(c_x, x), pred_xstart, self._per_sample(c_x0, x))
        last = self._is_last(t, is_last)
        if last and cond_fn is None:
            return {"sample": mean, "pred_xstart": pred_xstart}
        # std = exp(log_var / 2), log_var = frac * max_log + (1 - frac) * min_log, frac = (v + 1) / 2
        if self.model_var_type == ModelVarType.LEARNED_RANGE:
            half = ((max_log - min_log) / 4).nan_to_num(0.0)  # -inf - -inf where the step only re-noises
            std = torch.addcmul(self._per_sample(min_log / 2 + half, x), v, self._per_sample(half, x)).exp_()
        elif self.model_var_type == ModelVarType.LEARNED:
            std = torch.exp(0.5 * v)
            if target_alphas_cumprod is not None:  # no noise where the step only re-noises
                std = std * self._per_sample(torch.isfinite(min_log).double(), x)
        else:
            std = self._per_sample(torch.exp(0.5 * min_log), x)
        if cond_fn is not None:
            mean = self.condition_mean(cond_fn, {"mean": mean, "variance": std * std}, x, t, model_kwargs)
            if last:
                return {"sample": mean, "pred_xstart": pred_xstart}
        return {"sample": mean.addcmul_(std, draw_noise()), "pred_xstart": pred_xstart}

    def _posterior_coefficients(self, t, target=None):
        """(B,) float64 coefficients of one ancestral step: mean = c_x0 * x0 + c_x * x_t, and the
        two log variances the variance type picks from (min_log: posterior / fixed, max_log: beta).

        Nominal (target None): upstream's tables. Shifted: the posterior between alpha_bar_t and
        the target (see ``ddpm_step``); where the target is noisier, a deterministic re-noise with
        log variance -inf.
        """
        if target is None:
            c_x0 = self.table("posterior_mean_coef1", t.device)[t]
            c_x = self.table("posterior_mean_coef2", t.device)[t]
            large = self.model_var_type == ModelVarType.FIXED_LARGE
            min_log = self.table("fixed_large_log_variance" if large else "posterior_log_variance_clipped",
                                  t.device)[t]
            return c_x0, c_x, min_log, self.table("log_betas", t.device)[t]
        a = self.table("alphas_cumprod", t.device)[t]
        a_next = target.to(device=a.device, dtype=a.dtype)
        forward = a_next >= a
        beta = (1 - a / a_next).clamp(min=0)
        c_x0 = torch.where(forward, beta * a_next.sqrt() / (1 - a), a_next.sqrt() - (a * (1 - a_next) / (1 - a)).sqrt())
        c_x = torch.where(forward, (1 - a_next) * (1 - beta).sqrt() / (1 - a), ((1 - a_next) / (1 - a)).sqrt())
        tiny = 1e-20
        max_log = torch.log(beta.clamp(min=tiny))
        post_log = torch.log((beta * (1 - a_next) / (1 - a)).clamp(min=tiny))
        min_log = max_log if self.model_var_type == ModelVarType.FIXED_LARGE else post_log
        no_noise = torch.full_like(min_log, -float("inf"))
        min_log = torch.where(forward, min_log, no_noise)
        max_log = torch.where(forward, max_log, no_noise)
        return c_x0, c_x, min_log, max_log

    # ----------------------------------------------------------------- loops (upstream API)
    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None):
        """Upstream's single ancestral step: {"sample", "pred_xstart"}."""
        return self.ddpm_step(
            model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
            model_kwargs=model_kwargs, draw_noise=lambda: torch.randn_like(x),
        )

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None, eta=0.0):
        """Upstream's single DDIM step: {"sample", "pred_xstart"}."""
        return self.ddim_step(
            model, x, t, eta=eta, clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
            model_kwargs=model_kwargs, draw_noise=lambda: torch.randn_like(x),
        )
