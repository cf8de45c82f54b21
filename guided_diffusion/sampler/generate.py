"""Sample generation with per-sample seeds; knows nothing about processes or files.

Per-sample randomness (EDM-style): sample k's initial noise x_T, every later draw of the loop
(DDPM noise, DDIM noise when eta > 0) and its class label depend only on ``(seed, k)``. So image
k is the same whatever the batch size, the world size, or which rank draws it.

Scheme (counter-based, batched, no Python loop over the batch): a 32-bit key per
(seed, sample index, stream) is made with murmur3's fmix32 finaliser; stream 0 is x_T, stream
s + 1 the noise of loop step s, and a separate stream the class label. Element j of a draw is
hashed as ``fmix32(E_j ^ key)`` with ``E_j = fmix32(j ^ const)`` (cached per size); the top 24
bits give a uniform in (0, 1), and Box-Muller turns uniform pairs (j, j + m) into the two normals
of elements j and j + m. It is int32 tensor arithmetic (wrapping multiplication, masked shifts),
so the bits are the same on every device; the float transform may differ by rounding only.
"""

import functools
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .conditioning import LABEL_STREAM  # noqa: F401  (the class-label stream; re-exported)
from .loop import sample_loop_progressive
from .time_shift import stack_step_picks
from ..errors import ExplodedSampleError, NonFiniteSampleError  # noqa: F401 (raised here; defined in errors)

_MASK32 = 0xFFFFFFFF
# murmur3 fmix32 multipliers as signed int32 (int32 multiplication wraps like uint32's).
_M1_I32 = 0x85EBCA6B - 2**32
_M2_I32 = 0xC2B2AE35 - 2**32


def _to_i32(value):
    """An int in [0, 2^32) as the int32 with the same bits."""
    value = int(value) & _MASK32
    return value - 2**32 if value >= 2**31 else value


def fmix32(h):
    """murmur3's 32-bit finaliser on an int32 tensor (bit pattern of a uint32).

    Right shifts are arithmetic on int32, so each is masked to act as a logical shift.
    """
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * _M1_I32
    h = h ^ ((h >> 13) & 0x7FFFF)
    h = h * _M2_I32
    return h ^ ((h >> 16) & 0xFFFF)


# Rows of a CPU draw are made in chunks of about this many int32 elements (2 buffers of 512 KiB),
# so the ~20 elementwise passes stay in the L2 cache; on other devices one chunk holds everything.
_CPU_CHUNK_ELEMENTS = 1 << 17


@functools.lru_cache(maxsize=8)
def _element_mix(n, device):
    """(n,) int32 ``F_j = E_j ^ (E_j >>> 16)`` with ``E_j = fmix32(j ^ const)``.

    The first step of ``fmix32(E_j ^ key)`` is ``x ^= x >>> 16``, and a logical shift distributes
    over XOR, so it equals ``F_j ^ (key ^ (key >>> 16))``: the element part is done once per size.
    """
    e = fmix32(torch.arange(n, device=device, dtype=torch.int32) ^ _to_i32(0x5BD1E995))
    return e ^ ((e >> 16) & 0xFFFF)


class SampleNoise:
    """Counter-based standard normals addressed by (seed, sample index, stream, element)."""

    def __init__(self, seed: int):
        self.seed = _to_i32(seed)

    def _keys(self, indices, stream):
        """(B,) int32 keys for sample indices (B,) and an int stream."""
        k = fmix32((indices & _MASK32).to(torch.int64).sub_(2**31).to(torch.int32) ^ self.seed)
        k = fmix32(k ^ _to_i32(int(stream) * 0x632BE5AB + 0x1234567))
        return fmix32(k * _to_i32(0x9E3779B9) ^ self.seed)

    def normal(self, indices, stream, shape):
        """(B, *shape) float32 standard normals for sample ``indices`` (B,) int64 on their device.

        Box-Muller on hash pairs: elements [0, m) and [m, 2m) share one pair of uniforms
        (m = ceil(n / 2)) and get its cosine and sine normals.
        """
        n = int(np.prod(shape))
        m = (n + 1) // 2
        device = indices.device
        mix = _element_mix(2 * m, str(device))
        k = self._keys(indices, stream)
        k = k ^ ((k >> 16) & 0xFFFF)
        out = torch.empty((indices.shape[0], 2 * m), dtype=torch.float32, device=device)
        rows = out.shape[0] if device.type != "cpu" else max(1, _CPU_CHUNK_ELEMENTS // (2 * m))
        scratch = torch.empty((min(rows, out.shape[0]), 2 * m), dtype=torch.int32, device=device)
        for start in range(0, out.shape[0], rows):
            o = out[start : start + rows]
            _box_muller_fill(o, scratch[: o.shape[0]], mix, k[start : start + rows], m)
        z = out if n == 2 * m else out[:, :n]
        return z.reshape((indices.shape[0],) + tuple(shape))

    def integers(self, indices, stream, high):
        """(B,) int64 in [0, high) for sample ``indices``."""
        return (self._keys(indices, stream).to(torch.int64) & _MASK32) % int(high)


def _box_muller_fill(out, scratch, mix, k, m):
    """Fill ``out`` (b, 2m) float32 with the normals of keys ``k`` (b,) (already ``k ^ k >>> 16``).

    In place, two buffers: ``h = fmix32(E ^ key)`` is built in ``out``'s memory (as int32), its
    top 24 bits v give u = (v + 0.5) / 2^24 in ``scratch``, and the normals go back to ``out``.
    Every float operation is the one of the plain formula (the same kernels, same operands).
    """
    x, t = out.view(torch.int32), scratch
    torch.bitwise_xor(mix, k[:, None], out=x)  # x ^= x >>> 16 of fmix32, done
    x.mul_(_M1_I32)
    torch.bitwise_right_shift(x, 13, out=t).bitwise_and_(0x7FFFF)
    x.bitwise_xor_(t).mul_(_M2_I32)
    torch.bitwise_right_shift(x, 16, out=t).bitwise_and_(0xFFFF)
    x.bitwise_xor_(t).bitwise_right_shift_(8).bitwise_and_(0xFFFFFF)
    u = t.view(torch.float32)
    u.copy_(x).add_(0.5).mul_(1.0 / 16777216.0)
    radius, theta = u[:, :m], u[:, m:]
    radius.log_().mul_(-2.0).sqrt_()
    theta.mul_(2 * np.pi)
    torch.cos(theta, out=out[:, :m]).mul_(radius)
    torch.sin(theta, out=out[:, m:]).mul_(radius)


# The exploded-state guard (see exploded_share): a state is exploded where its pixels imply
# |x0| > EXPLODED_X0 whatever their noise within EXPLODED_EPS standard deviations, for more than
# EXPLODED_SHARE of a sample's pixels.
EXPLODED_X0 = 2.0
EXPLODED_EPS = 5.0
EXPLODED_SHARE = 0.5


def exploded_share(x, alpha_bar):
    """(B,) share of each sample's pixels that no data in [-2, 2] can explain at its noise level.

    :param x: (B, C, H, W) a state of the reverse process, at noise level ``alpha_bar``.
    :param alpha_bar: alpha_bar a of that state: float, 0-d or (B,) (1 = clean).
    A state is x = sqrt(a) x0 + sqrt(1 - a) eps; a pixel whose |x| > 2 sqrt(a) + 5 sqrt(1 - a)
    implies |x0| = |x - sqrt(1 - a) eps| / sqrt(a) > 2 for every |eps| <= 5 (EXPLODED_X0,
    EXPLODED_EPS). Pure noise has such pixels with probability 6e-7; a run whose solver amplified
    its network's error (e.g. an unclipped multistep move from alpha_bar ~ 2e-9) has most.
    """
    a = torch.as_tensor(alpha_bar, dtype=torch.float64, device=x.device)
    bound = EXPLODED_X0 * torch.sqrt(a) + EXPLODED_EPS * torch.sqrt(1 - a)
    bound = bound.to(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1)) if bound.ndim else bound.to(x.dtype)
    return (x.abs() > bound).flatten(1).to(x.dtype).mean(dim=1)


def _grid_text(diffusion):
    """The respaced grid as its original timesteps, noisiest first: '999, 888, ..., 0 (10 steps)'."""
    ts = sorted((int(t) for t in diffusion.timestep_map), reverse=True)
    shown = ", ".join(map(str, ts)) if len(ts) <= 4 else f"{ts[0]}, {ts[1]}, {ts[2]}, ..., {ts[-1]}"
    return f"timesteps {shown} ({len(ts)} steps)"


@dataclass
class SampleBatch:
    indices: np.ndarray  # (B,) int64 global sample indices
    images: np.ndarray  # (B, H, W, 3) uint8 RGB
    labels: Optional[np.ndarray]  # (B,) int64 or None
    trace: Optional[np.ndarray] = None  # (B, S) int32 matched original timestep per step, -1 = not shifted


def to_uint8_rgb(x):
    """(B, C, H, W) in [-1, 1] -> (B, H, W, 3) uint8 numpy; truncates like upstream, grey -> RGB."""
    img = ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    if img.shape[1] == 1:
        img = img.expand(-1, 3, -1, -1)
    return img.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def sample_batch(model, diffusion, indices, *, shape, seed, sampler, num_classes=None, progress=False,
                 trace=False, conditioning=None):
    """Generate the samples with global ``indices`` as one batch.

    :param indices: (B,) int64 tensor on the model's device.
    :param shape: (C, H, W) of one sample.
    :param sampler: a :class:`~guided_diffusion.sampler.loop.Sampler`.
    :param num_classes: draw class labels (class-conditional models) when set.
    :param trace: also return the per-sample trace of the time shift.
    :param conditioning: optional :class:`~guided_diffusion.sampler.conditioning.ClassifierGuidance` or
        :class:`~guided_diffusion.sampler.conditioning.LowResInputs`: it gives the labels and model inputs of
        the samples (from their indices) and the loop's ``cond_fn``; ``num_classes`` is then the
        model's (None for an unconditional model).
    :return: (x0 (B, C, H, W) float in [-1, 1], labels (B,) or None), and with ``trace`` a third
        element: (B, S) int32 matched original timestep per sample and step (-1: not shifted).
    :raises NonFiniteSampleError: naming the first bad sample index and the sampler settings.
    :raises ExplodedSampleError: (a NonFiniteSampleError) when a state of some sample exploded:
        after some step, more than EXPLODED_SHARE of its pixels lie where no data in [-2, 2] can be
        at that step's noise level (:func:`exploded_share`, with the alpha_bar each sample was moved
        to). Such a run's uint8 output is saturated noise; a hard stop rather than a warning, since
        no model whose data the output's [-1, 1] pixel range represents can produce it.
        The check runs on the device every step and is read once at the end.
    """
    noise = SampleNoise(seed)
    x_T = noise.normal(indices, 0, shape)
    model_kwargs = {}
    labels = None
    cond_fn = None
    if conditioning is not None:
        labels, model_kwargs = conditioning.inputs(indices, noise, num_classes)
        model = conditioning.wrap_model(model, num_classes)
        cond_fn = conditioning.cond_fn
    elif num_classes:
        labels = noise.integers(indices, LABEL_STREAM, num_classes)
        model_kwargs["y"] = labels
    picks, out = [], None
    worst = torch.zeros(x_T.shape[0], dtype=torch.float32, device=x_T.device)  # max exploded share
    worst_t = torch.full_like(worst, -1, dtype=torch.long)  # original timestep of that step
    alphas_cumprod_prev = diffusion.table("alphas_cumprod_prev", x_T.device)
    for out in sample_loop_progressive(
        diffusion,
        model,
        x_T.shape,
        sampler,
        noise=x_T,
        cond_fn=cond_fn,
        model_kwargs=model_kwargs,
        progress=progress,
        noise_fn=lambda step, like: noise.normal(indices, step + 1, shape),
    ):
        if trace:
            picks.append(out["shifted_timesteps"])
        target = out["target_alphas_cumprod"]
        share = exploded_share(out["sample"], alphas_cumprod_prev[out["t"]] if target is None else target).float()
        worst_t = torch.where(share > worst, torch.full_like(worst_t, out["timestep"]), worst_t)
        worst = torch.maximum(worst, share)
    x = out["sample"]
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        bad = int(indices[~finite][0])
        respacing = f"{diffusion.num_timesteps} steps"
        raise NonFiniteSampleError(
            f"sample {bad} is not finite (NaN/inf) with {sampler.describe()}"
            f"{'' if conditioning is None else ', ' + conditioning.describe()}, {respacing}, seed={seed}; "
            "nothing was written for its batch"
        )
    exploded = worst > EXPLODED_SHARE
    if bool(exploded.any()):
        k = int(torch.nonzero(exploded)[0])
        hint = "" if sampler.clip_denoised else "--clip_denoised True, "
        raise ExplodedSampleError(
            f"sample {int(indices[k])} exploded with {sampler.describe()}"
            f"{'' if conditioning is None else ', ' + conditioning.describe()} on the grid of "
            f"{_grid_text(diffusion)}, seed={seed}: after the step from t = {int(worst_t[k])}, "
            f"{float(worst[k]):.0%} of its pixels imply |x0| > {EXPLODED_X0:g} for any noise within "
            f"{EXPLODED_EPS:g} sd; nothing was written for its batch (try {hint}"
            "another --solver or a grid that starts lower)"
        )
    if trace:
        return x, labels, stack_step_picks(picks, x.shape[0])
    return x, labels


def generate_samples(model, diffusion, indices, *, batch_size, device, trace=False, **kwargs):
    """Yield :class:`SampleBatch` es for the global sample ``indices`` (a sequence of ints), in order.

    Extra keywords go to :func:`sample_batch`; ``trace`` fills :attr:`SampleBatch.trace`.
    """
    indices = list(indices)
    for start in range(0, len(indices), batch_size):
        idx = torch.tensor(indices[start : start + batch_size], dtype=torch.long, device=device)
        out = sample_batch(model, diffusion, idx, trace=trace, **kwargs)
        x, labels = out[0], out[1]
        yield SampleBatch(
            indices=idx.cpu().numpy(),
            images=to_uint8_rgb(x),
            labels=None if labels is None else labels.cpu().numpy(),
            trace=out[2].numpy() if trace else None,
        )
