"""Small layer helpers for the ADM UNet (same behaviour as guided-diffusion's ``nn.py``)."""

import math

import torch
import torch.nn as nn


class SiLU(nn.SiLU):
    """SiLU activation (kept as a named class so module trees read like upstream)."""


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back to the input dtype (fp16-safe)."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def conv_nd(dims, *args, **kwargs):
    """A 1D, 2D or 3D convolution module."""
    if dims == 1:
        return nn.Conv1d(*args, **kwargs)
    if dims == 2:
        return nn.Conv2d(*args, **kwargs)
    if dims == 3:
        return nn.Conv3d(*args, **kwargs)
    raise ValueError(f"unsupported dimensions: {dims}")


def linear(*args, **kwargs):
    """A linear module."""
    return nn.Linear(*args, **kwargs)


def avg_pool_nd(dims, *args, **kwargs):
    """A 1D, 2D or 3D average-pooling module."""
    if dims == 1:
        return nn.AvgPool1d(*args, **kwargs)
    if dims == 2:
        return nn.AvgPool2d(*args, **kwargs)
    if dims == 3:
        return nn.AvgPool3d(*args, **kwargs)
    raise ValueError(f"unsupported dimensions: {dims}")


def update_ema(target_params, source_params, rate=0.99):
    """In place: target = rate * target + (1 - rate) * source, parameter by parameter."""
    with torch.no_grad():
        for targ, src in zip(target_params, source_params):
            targ.mul_(rate).add_(src, alpha=1 - rate)


def zero_module(module):
    """Zero a module's parameters in place and return it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def scale_module(module, scale):
    """Scale a module's parameters in place and return it."""
    for p in module.parameters():
        p.detach().mul_(scale)
    return module


def mean_flat(tensor):
    """Mean over every dimension but the first: (B, ...) -> (B,)."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def normalization(channels):
    """The ADM normalisation layer: GroupNorm with 32 groups, float32 inside."""
    return GroupNorm32(32, channels)


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal timestep embeddings.

    :param timesteps: (B,) tensor of (possibly fractional) timesteps, as the network receives them.
    :param dim: embedding width.
    :return: (B, dim) float32 tensor ``[cos(t * f_k), sin(t * f_k)]`` with
        ``f_k = exp(-ln(max_period) * k / (dim // 2))``, cos first (upstream order).
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(start=0, end=half, dtype=torch.float32, device=timesteps.device)
        / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def checkpoint(func, inputs, params, flag):
    """Run ``func(*inputs)``, with activation checkpointing when ``flag`` is true and grads are on.

    Uses ``torch.utils.checkpoint`` (non-reentrant), which recomputes the forward pass during
    backward instead of storing intermediate activations. ``params`` is accepted for upstream
    signature compatibility; the non-reentrant implementation finds parameters itself.
    """
    if flag and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint as _ckpt

        return _ckpt(func, *inputs, use_reentrant=False)
    return func(*inputs)
