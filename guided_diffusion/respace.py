"""Respacing: a diffusion process that keeps a subset of the base process's timesteps.

The kept original timesteps become ``timestep_map`` (sorted); respaced index i has
``alpha_bar = base_alpha_bar[timestep_map[i]]`` (recomputed through new betas exactly as upstream,
equal up to float error), and the network always receives the original timestep. The base
process's full ``alphas_cumprod`` table is kept as ``base_alphas_cumprod`` because the time shift
searches the full 1000-step grid.
"""

import numpy as np

from .gaussian_diffusion import GaussianDiffusion
from .sampler.grids import space_timesteps

__all__ = ["SpacedDiffusion", "space_timesteps"]


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion process that can skip steps of a base process.

    :param use_timesteps: collection of original timesteps to keep (any order; the largest is where
        sampling starts from noise, e.g. T - 1 for ``trailingN``).
    :param shift_uses_grid: the time shift's "adm"-family target uses the grid's own next timestep
        (``nxt + tau - cur``) instead of upstream's stride approximation ``tau - T // (S - 1) - 1``;
        False (upstream) for upstream's grid families, True for the others (see ``sampler.grids``).
    :param kwargs: the base ``GaussianDiffusion`` keywords (``betas`` of the full process, ...).
    """

    def __init__(self, use_timesteps, shift_uses_grid=False, **kwargs):
        self.shift_uses_grid = bool(shift_uses_grid)
        base_betas = np.asarray(kwargs["betas"], dtype=np.float64)
        base_alphas_cumprod = np.cumprod(1.0 - base_betas)
        self.use_timesteps = set(int(t) for t in use_timesteps)
        if not self.use_timesteps or min(self.use_timesteps) < 0 or max(self.use_timesteps) >= len(base_betas):
            raise ValueError(
                f"use_timesteps must be a non-empty subset of [0, {len(base_betas)})"
            )
        timestep_map = []
        new_betas = []
        last_alpha_cumprod = 1.0
        for i, alpha_cumprod in enumerate(base_alphas_cumprod):
            if i in self.use_timesteps:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                timestep_map.append(i)
        kwargs["betas"] = np.array(new_betas)
        super().__init__(
            timestep_map=timestep_map,
            base_alphas_cumprod=base_alphas_cumprod,
            original_num_steps=len(base_betas),
            **kwargs,
        )
