"""The time shift (TS-DPM) and the training-free corrections as a diffusers scheduler.

:class:`TimeShiftDDIMScheduler` is a ``diffusers.DDIMScheduler`` that a diffusers user drops into a
pipeline::

    from guided_diffusion.diffusers_scheduler import TimeShiftDDIMScheduler
    pipe.scheduler = TimeShiftDDIMScheduler.from_config(pipe.scheduler.config, window=40, cutoff=300,
                                                        rule="adm")
    images = pipe(num_inference_steps=10).images

Each ``step(model_output, timestep, sample, ...)`` is one step of the project's loop
(:mod:`guided_diffusion.sampler.loop`), in its order: epsilon scaling (eps / lambda_i), the
prediction x0_hat (clipped with ``clip_sample``), the time shift on eligible steps after the first
(each sample's target alpha_bar from :func:`guided_diffusion.sampler.time_shift.shift_target`, the
same pure function the loop calls; rules "adm", "pndm", "adm-data", "offset"), the DDIM update to
that target (Song et al. eq. 12 with ``eta``) and DCW on the new state. The next step starts from
the nominal grid again ("target-only"). Steps the shift does not touch, with no correction, are
``DDIMScheduler.step`` itself; with ``window=0`` (the default) and no correction the scheduler is
diffusers' DDIM.

The shift searches the base alpha_bar in float64 from the config (as the loop does); the
``timestep_spacing`` of the config picks the grid ("leading" with N dividing T is ``ddimN``).
``use_clipped_model_output=True`` re-derives eps from the clipped x0, which is what the project's
DDIM does; diffusers' default (False) keeps the network's eps.
"""

import torch

from .diffusers_model import import_diffusers

diffusers = import_diffusers()


class TimeShiftDDIMScheduler(diffusers.DDIMScheduler):
    """``DDIMScheduler`` plus ``window``, ``cutoff``, ``rule`` (the time shift; window 0: off),
    ``eps_scale`` / ``eps_scale_k`` (epsilon scaling; 1 / 0: off), ``dcw_low`` / ``dcw_high`` (DCW;
    0: off) and ``use_clipped_model_output`` (the default of :meth:`step`). All are config entries,
    so ``from_config`` and ``save_pretrained`` keep them."""

    @staticmethod
    def _get_init_keys(input_class):
        """The config keys ``from_config`` passes on: ours and every ``DDIMScheduler`` argument."""
        import inspect

        keys = set(inspect.signature(input_class.__init__).parameters)
        return keys | set(inspect.signature(diffusers.DDIMScheduler.__init__).parameters)

    @diffusers.configuration_utils.register_to_config
    def __init__(self, window: int = 0, cutoff: int = 300, rule: str = "adm", eps_scale: float = 1.0,
                 eps_scale_k: float = 0.0, dcw_low: float = 0.0, dcw_high: float = 0.0,
                 use_clipped_model_output: bool = False, **kwargs):
        super().__init__(**kwargs)
        from .sampler.corrections import Corrections
        from .sampler.time_shift import TimeShift

        self.time_shift = TimeShift(window=int(window), cutoff=int(cutoff), rule=rule) if window else None
        self.corrections = Corrections(eps_scale=float(eps_scale), eps_scale_k=float(eps_scale_k),
                                       dcw_low=float(dcw_low), dcw_high=float(dcw_high))
        self._base64 = None

    def base_alphas_cumprod64(self):
        """(T,) float64 base alpha_bar from the config's beta schedule (the table the shift searches)."""
        if self._base64 is None:
            import numpy as np

            from .diffusers_model import settings_from_configs
            from .schedules import get_named_beta_schedule

            cfg = dict(self.config)
            steps = int(cfg["num_train_timesteps"])
            if cfg.get("trained_betas") is not None:
                betas = np.asarray(cfg["trained_betas"], dtype=np.float64)
            else:
                name = settings_from_configs({"in_channels": 3}, {**cfg, "variance_type": "fixed_large",
                                                                  "thresholding": False})["noise_schedule"]
                betas = get_named_beta_schedule(name, steps)
            self._base64 = torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float64)
        return self._base64

    def _position(self, timestep):
        """(k, cur, nxt): the step number (0 first), this and the nominal next original timestep."""
        steps = [int(t) for t in self.timesteps]
        cur = int(timestep)
        k = steps.index(cur)
        nxt = cur - self.config.num_train_timesteps // self.num_inference_steps
        return k, cur, nxt if nxt >= 0 else -1

    def step(self, model_output, timestep, sample, eta=0.0, use_clipped_model_output=None, generator=None,
             variance_noise=None, return_dict=True):
        """One step from ``timestep`` (an original timestep of ``self.timesteps``).

        :param model_output: (B, C, H, W) the network's eps (``prediction_type`` epsilon).
        :param sample: (B, C, H, W) x_t.
        :param variance_noise: (B, C, H, W) the standard normal for eta > 0 (else drawn with ``generator``).
        :return: ``DDIMSchedulerOutput`` (prev_sample, pred_original_sample) or a tuple.
        """
        from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

        from .sampler.corrections import apply_eps_scaling
        from .sampler.time_shift import is_eligible, shift_target

        if use_clipped_model_output is None:
            use_clipped_model_output = self.config.use_clipped_model_output
        k, cur, nxt = self._position(timestep)
        S = self.num_inference_steps
        corr, ts = self.corrections, self.time_shift
        if corr.active and k == 0:
            corr.validate(tuple(sample.shape[2:]), S)
        if corr.es_active:
            model_output = apply_eps_scaling(model_output, corr.eps_factor(S - 1 - k))
        eligible = ts is not None and is_eligible(ts, cur, nxt, first_step=k == 0)
        if not eligible:
            out = super().step(model_output, timestep, sample, eta=eta,
                               use_clipped_model_output=use_clipped_model_output, generator=generator,
                               variance_noise=variance_noise, return_dict=True)
            prev, x0 = out.prev_sample, out.pred_original_sample
        else:
            if self.config.prediction_type != "epsilon" or self.config.thresholding:
                raise ValueError("the time shift here needs prediction_type epsilon and no thresholding")
            base = self.base_alphas_cumprod64().to(sample.device)
            a = base[cur]
            x0 = (sample - torch.sqrt(1 - a).to(sample.dtype) * model_output) / torch.sqrt(a).to(sample.dtype)
            eps = model_output
            if self.config.clip_sample:
                r = self.config.clip_sample_range
                x0 = x0.clamp(-r, r)
                if use_clipped_model_output:
                    eps = (sample - torch.sqrt(a).to(sample.dtype) * x0) / torch.sqrt(1 - a).to(sample.dtype)
            shift = shift_target(sample, base, ts=ts, cur=cur, nxt=nxt, num_steps=S, x0_hat=x0)
            a_next = shift.target_alphas_cumprod.to(device=sample.device, dtype=torch.float64)
            sigma = eta * torch.sqrt((1 - a_next) / (1 - a)) * torch.sqrt((1 - a / a_next).clamp(min=0))
            coef = lambda c: c.to(sample.dtype).reshape(-1, *([1] * (sample.ndim - 1)))  # noqa: E731
            prev = coef(torch.sqrt(a_next)) * x0 + coef(torch.sqrt((1 - a_next - sigma ** 2).clamp(min=0))) * eps
            if eta > 0:
                if variance_noise is None:
                    variance_noise = torch.randn(sample.shape, generator=generator, device=sample.device,
                                                 dtype=sample.dtype)
                prev = prev + coef(sigma) * variance_noise
        if corr.dcw_active:
            prev = corr.correct(prev, x0, self.base_alphas_cumprod64().to(sample.device)[cur])
        if not return_dict:
            return prev, x0
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
