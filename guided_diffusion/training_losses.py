"""Training objectives and bits/dim for :class:`GaussianDiffusion` (a mixin; upstream method names).

Equations refer to Ho et al. 2020 (DDPM) and Nichol & Dhariwal 2021 (improved DDPM, hybrid loss).
DDPM-IP input perturbation (Ning et al. 2023): the network input is built from
``noise + gamma_t * xi`` while the regression target stays ``noise``.
"""

import math

import numpy as np
import torch

from .losses import discretized_gaussian_log_likelihood, normal_kl
from .nn import mean_flat


def input_perturbation_schedule(gamma, num_timesteps, schedule_type="linear", cutoff=0):
    """Per-timestep DDPM-IP scale gamma_t, (T,) float64.

    "linear": linspace(0.01 * gamma, gamma, T) (TS-DPM-ADM's schedule); "cosine": gamma times
    sin^2(pi/2 * t / (T-1)), rising from 0 to gamma; "constant": gamma everywhere (the original
    DDPM-IP). The last ``cutoff`` timesteps (t >= T - cutoff) get 0. "linaer" (upstream's typo
    default) is accepted as "linear".
    """
    if schedule_type == "linaer":
        schedule_type = "linear"
    if schedule_type == "linear":
        scale = np.linspace(0.01 * gamma, gamma, num_timesteps, dtype=np.float64)
    elif schedule_type == "cosine":
        scale = gamma * np.sin(np.linspace(0.0, 1.0, num_timesteps) * math.pi / 2) ** 2
    elif schedule_type == "constant":
        scale = np.full(num_timesteps, float(gamma), dtype=np.float64)
    else:
        raise ValueError(
            f"perturb_schedule_type {schedule_type!r}: use 'linear', 'cosine' or 'constant'"
        )
    if cutoff > 0:
        scale[max(num_timesteps - int(cutoff), 0):] = 0.0
    return scale


class TrainingLossesMixin:
    """``training_losses``, the variational-bound terms and ``calc_bpd_loop``."""

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None, perturb_noise=None):
        """Per-sample training loss at respaced timesteps ``t``.

        :param x_start: (B, C, H, W) clean images in [-1, 1].
        :param t: (B,) int64 respaced timestep indices.
        :param noise: (B, C, H, W) the Gaussian noise (drawn if None).
        :param perturb_noise: the extra DDPM-IP noise xi (drawn if None and input_pertub > 0).
        :return: dict of (B,) tensors: "loss", and "mse" / "vb" where they apply.
        """
        model_kwargs = model_kwargs or {}
        if noise is None:
            noise = torch.randn_like(x_start)
        noise_in = noise
        if self.input_pertub > 0:
            if perturb_noise is None:
                perturb_noise = torch.randn_like(x_start)
            noise_in = noise + self._extract("input_perturb_scale", t, x_start.shape) * perturb_noise
        x_t = self.q_sample(x_start, t, noise=noise_in)
        terms = {}
        if self.loss_type.is_kl():
            terms["loss"] = self._vb_terms_bpd(
                model, x_start, x_t, t, clip_denoised=False, model_kwargs=model_kwargs
            )["output"]
            if self.loss_type.name == "RESCALED_KL":
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms
        model_output = self._wrap_model(model)(x_t, t, **model_kwargs)
        if self.model_var_type.is_learned():
            channels = x_t.shape[1]
            model_output, model_var_values = torch.split(model_output, channels, dim=1)
            # Learn the variance with the VB term only; freeze the mean for it (improved DDPM 3.1).
            frozen_out = torch.cat([model_output.detach(), model_var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(
                lambda *args, r=frozen_out: r, x_start, x_t, t, clip_denoised=False
            )["output"]
            if self.loss_type.name == "RESCALED_MSE":
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        if self.model_mean_type.name == "PREVIOUS_X":
            target = self.q_posterior_mean_variance(x_start, x_t, t)[0]
        elif self.model_mean_type.name == "START_X":
            target = x_start
        else:
            target = noise
        terms["mse"] = mean_flat((target - model_output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
        """Bits/dim of one term of the variational bound: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)),
        or the decoder NLL at t == 0 (Ho et al. eq. 5). Returns {"output": (B,), "pred_xstart"}."""
        true_mean, _, true_log_variance_clipped = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(
            model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs
        )
        kl = normal_kl(true_mean, true_log_variance_clipped, out["mean"], out["log_variance"])
        kl = mean_flat(kl) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}

    def prior_bpd(self, x_start):
        """KL(q(x_T | x0) || N(0, I)) in bits/dim, (B,) for x_start (B, C, H, W)."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        qt_mean, _, qt_log_variance = self.q_mean_variance(x_start, t)
        return mean_flat(normal_kl(qt_mean, qt_log_variance, 0.0, 0.0)) / math.log(2.0)

    _prior_bpd = prior_bpd  # upstream's name

    def vb_terms_at(self, model, x_start, t_columns, noise_fn, clip_denoised=True, model_kwargs=None):
        """Variational-bound terms of each image at its own timesteps.

        :param x_start: (B, C, H, W) images in [-1, 1].
        :param t_columns: (B, K) int64 timesteps of this diffusion (respaced indices), one column per term.
        :param noise_fn: ``noise_fn(k, t, like) -> (B, C, H, W)``: the standard normals of column k,
            whose timesteps are ``t`` (B,), for the forward sample x_t = q_sample(x0, t, noise).
        :return: dict of (B, K) float tensors: "vb" (bits/dim: the KL of step t, the discretised
            decoder NLL where t == 0; Ho et al. eq. 5), "xstart_mse", "mse" (eps error).
        """
        vb, xstart_mse, mse = [], [], []
        for k in range(t_columns.shape[1]):
            t_batch = t_columns[:, k].to(x_start.device)
            noise = noise_fn(k, t_batch, x_start)
            x_t = self.q_sample(x_start, t_batch, noise=noise)
            with torch.no_grad():
                out = self._vb_terms_bpd(model, x_start, x_t, t_batch, clip_denoised, model_kwargs)
            vb.append(out["output"])
            xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
            eps = self._predict_eps_from_xstart(x_t, t_batch, out["pred_xstart"])
            mse.append(mean_flat((eps - noise) ** 2))
        return {"vb": torch.stack(vb, dim=1), "xstart_mse": torch.stack(xstart_mse, dim=1),
                "mse": torch.stack(mse, dim=1)}

    def calc_bpd_loop(self, model, x_start, clip_denoised=True, model_kwargs=None, noise_fn=None):
        """The whole variational bound in bits/dim, plus per-step terms.

        :param noise_fn: optional ``noise_fn(i, like) -> (B, C, H, W)`` standard normals for the
            forward sample at respaced step i (default ``torch.randn_like``; per-sample seeds in
            ``scripts/image_nll.py``).
        :return: dict with "total_bpd" (B,), "prior_bpd" (B,), "vb" (B, S), "xstart_mse" (B, S),
            "mse" (B, S) (eps error); columns in decreasing t, as upstream.
        """
        batch, steps = x_start.shape[0], self.num_timesteps
        t_columns = torch.arange(steps - 1, -1, -1, dtype=torch.long).expand(batch, steps)

        def column_noise(k, t, like):
            return torch.randn_like(like) if noise_fn is None else noise_fn(steps - 1 - k, like)

        terms = self.vb_terms_at(model, x_start, t_columns, column_noise, clip_denoised, model_kwargs)
        prior_bpd = self.prior_bpd(x_start)
        return {"total_bpd": terms["vb"].sum(dim=1) + prior_bpd, "prior_bpd": prior_bpd, **terms}
