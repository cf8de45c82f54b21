"""Training-free corrections of one reverse step: Epsilon Scaling (ES) and DCW.

Pure functions of tensors, like ``time_shift.py``: no model, no RNG, no state between steps. The
one loop driver calls each at its point of a step (docs/solvers.md, "Corrections and solvers"); when
several are on they are applied in this FIXED order within one step from x_t to x_{t-1}:

    1. network(x_t, t) -> eps (and v)
    2. ES      eps <- eps / lambda_i                     :func:`apply_eps_scaling`  (before x0_hat)
    3. x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), clipped to [-1, 1] if clip_denoised
    4. TS      target alpha_bar a' per sample            ``time_shift.shift_target``
               (rules "adm"/"pndm"/"offset" may choose it before the network call, since they only
               read x_t; "adm-data" reads x0_hat, so it is chosen here, after step 3)
    5. solver update (DDIM / ancestral, noise included) -> x_{t-1}
    6. DCW     x_{t-1} += low/high-band correction of (x_{t-1} - x0_hat)   :func:`dcw_correct`

Every correction is off by default (``eps_scale = 1``, ``eps_scale_k = 0``, ``dcw_low = dcw_high
= 0``) and then returns its input tensor itself, so sampling stays bit-identical to the plain loop.

Validation messages are one line and name the CLI flag to change (``--eps_scale``,
``--eps_scale_k``, ``--dcw_low``, ``--dcw_high``).
"""

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F

Number = Union[float, int]


# ----------------------------------------------------------------------------- Epsilon Scaling
def eps_scale_factor(step_index: int, b: float, k: float = 0.0) -> float:
    """ES schedule lambda_i = k * i + b (Ning et al., ICLR 2024, "Elucidating the Exposure Bias in
    Diffusion Models", sec. 5; uniform schedule for k = 0, linear "ES*" schedule otherwise).

    :param step_index: i, the RESPACED step index: S - 1 at the noisiest (first) step, 0 at the last
        (the ``i`` of ``sampling.sample_loop_progressive``), not the original timestep.
    :param b: ``--eps_scale``, lambda at the last step (i = 0).
    :param k: ``--eps_scale_k``, slope per respaced step.
    :return: lambda_i as a Python float (host side, no device sync).
    """
    return float(k) * int(step_index) + float(b)


def apply_eps_scaling(eps: torch.Tensor, lam: Number) -> torch.Tensor:
    """ES: the network's epsilon divided by lambda_i, before x0_hat is formed.

    x0_hat = sqrt(1/a_t) x_t - sqrt(1/a_t - 1) * eps / lambda_i (ADM-ES, docs section 1). Apply it to
    the eps channels only (the first C of a learned-sigma output's 2C), before x0_hat and before any
    clipping; the DDIM update re-derives eps from x0_hat and the ancestral posterior mean is built
    from x0_hat, so both updates see the scaled eps.

    :param eps: (B, C, H, W) the network's epsilon prediction.
    :param lam: lambda_i (a Python float, see :func:`eps_scale_factor`).
    :return: (B, C, H, W) ``eps / lam``; ``eps`` itself (the same object, bit-identical) when lam == 1.
    """
    if lam == 1:
        return eps
    return eps / lam


def validate_eps_scale(b: float, k: float = 0.0, num_steps: Optional[int] = None) -> None:
    """Raise a one-line ValueError unless lambda_i = k * i + b is finite and > 0 at every step.

    Without ``num_steps`` only b and k themselves are checked (finite, b > 0); with it, lambda_i is
    checked at i = 0 and i = S - 1 (it is linear in i, so these bound every step).
    """
    if not math.isfinite(float(b)) or float(b) <= 0:
        raise ValueError(f"--eps_scale must be a finite number > 0 (got {b}); use 1.0 to turn epsilon scaling off")
    if not math.isfinite(float(k)):
        raise ValueError(f"--eps_scale_k must be a finite number (got {k}); use 0.0 for a uniform lambda = --eps_scale")
    if num_steps is not None and int(num_steps) >= 1:
        for i in (0, int(num_steps) - 1):
            lam = eps_scale_factor(i, b, k)
            if not lam > 0:
                raise ValueError(
                    f"--eps_scale {b} / --eps_scale_k {k} give lambda_i = k*i + b = {lam:g} <= 0 at step i={i} "
                    f"of {num_steps}; choose them so that b + k*i > 0 for i in [0, {int(num_steps) - 1}]"
                )


# ----------------------------------------------------------------------------- DCW
def haar_low_band(r: torch.Tensor) -> torch.Tensor:
    """Low band of a one-level 2D Haar split, in the image domain: up2(avgpool2(r)).

    Each 2x2 block is replaced by its mean. This equals reconstructing from the orthonormal Haar LL
    coefficients alone (LL = (a + b + c + d) / 2, synthesis LL / 2 on each pixel); r minus it is the
    reconstruction from LH, HL and HH together.

    :param r: (B, C, H, W) with H and W even.
    :return: (B, C, H, W).
    """
    pooled = F.avg_pool2d(r, kernel_size=2, stride=2)
    return pooled.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def validate_dcw(low: Number, high: Number, height: Optional[int] = None, width: Optional[int] = None) -> None:
    """One-line ValueError for non-finite weights, or (when DCW is on) an odd image height/width."""
    for flag, v in (("--dcw_low", low), ("--dcw_high", high)):
        if not math.isfinite(float(v)):
            raise ValueError(f"{flag} must be a finite number (got {v}); use 0.0 to turn that band off")
    if (low != 0 or high != 0) and height is not None and width is not None:
        if int(height) % 2 or int(width) % 2:
            raise ValueError(
                f"--dcw_low/--dcw_high need an even image height and width for the 2x2 Haar split "
                f"(got H={height}, W={width}); set both to 0 or use an even --image_size"
            )


def dcw_progress(alpha_bar_t: Union[Number, torch.Tensor]) -> Union[float, torch.Tensor]:
    """The DCW progress factor of our ADM adaptation: sqrt(1 - alpha_bar_t), the noise std of the
    current step (1 near the noisiest step, 0 at the clean end); replaces EDM's t_i / sigma_max."""
    if isinstance(alpha_bar_t, torch.Tensor):
        return (1 - alpha_bar_t.double()).clamp(min=0).sqrt()
    return math.sqrt(max(1.0 - float(alpha_bar_t), 0.0))


def dcw_weights(low: Number, high: Number, alpha_bar_t: Union[Number, torch.Tensor]):
    """Per-step DCW weights (docs section 2): with p = sqrt(1 - alpha_bar_t),

        w_low(t)  = lambda_l * p
        w_high(t) = lambda_h * (1 - p)

    This is the reference code's schedule (AMAP-ML/DCW, EDM Euler: w_low = lambda_l t_i/sigma_max,
    w_high = lambda_h (1 - t_i/sigma_max)) with the progress factor t_i/sigma_max replaced by
    sqrt(1 - a_t), the project's adaptation for the ADM loops (ours, not the paper's).

    :return: (w_low, w_high), floats or (B,) float64 tensors like ``alpha_bar_t``.
    """
    p = dcw_progress(alpha_bar_t)
    return low * p, high * (1 - p)


def _per_sample(w, x):
    if isinstance(w, torch.Tensor):
        return w.to(device=x.device, dtype=x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return w


def dcw_correct(
    x_next: torch.Tensor,
    x0_hat: torch.Tensor,
    low: Number,
    high: Number,
    *,
    alpha_bar_t: Union[Number, torch.Tensor],
) -> torch.Tensor:
    """DCW, differential correction in the wavelet domain (arXiv 2604.16044, CVPR 2026; docs section 2).

    Call AFTER the solver update has produced x_{t-1} (noise included, for DDPM / DDIM eta > 0), with
    x0_hat the (clipped) prediction of the same network call. With r = x_{t-1} - x0_hat and a one-level
    Haar split in its avgpool/upsample form (:func:`haar_low_band`, no wavelet library):

        x_{t-1} += w_low(t) * up2(avgpool2(r)) + w_high(t) * (r - up2(avgpool2(r)))

    with the weights of :func:`dcw_weights` (w_low = lambda_l sqrt(1 - a_t), w_high = lambda_h
    (1 - sqrt(1 - a_t))). Positive weights push x_{t-1} away from x0_hat. Our choice where the doc
    leaves one: a_t is the NOMINAL alpha_bar of the current step (the level x_t sits at and the
    network is called at, ``alphas_cumprod[i]`` of the respaced diffusion), not the time-shift target
    a'. At the last step the ADM updates return x0_hat (DDIM a' = 1; DDPM posterior coefficients 1, 0),
    so r = 0 and DCW changes nothing there.

    :param x_next: (B, C, H, W) x_{t-1} from the solver update; H and W even.
    :param x0_hat: (B, C, H, W) this step's x0 prediction.
    :param low: lambda_l (``--dcw_low``); 0 turns the low band off.
    :param high: lambda_h (``--dcw_high``); 0 turns the high bands off.
    :param alpha_bar_t: nominal alpha_bar of the current step: a float or a (B,) tensor.
    :return: (B, C, H, W) a new tensor; ``x_next`` itself (bit-identical) when low == high == 0.
    """
    if low == 0 and high == 0:
        return x_next
    validate_dcw(low, high, x_next.shape[-2], x_next.shape[-1])
    w_low, w_high = dcw_weights(low, high, alpha_bar_t)
    r = x_next - x0_hat
    r_low = haar_low_band(r)
    out = x_next
    if low != 0:
        out = out + _per_sample(w_low, x_next) * r_low
    if high != 0:
        out = out + _per_sample(w_high, x_next) * (r - r_low)
    return out


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Corrections:
    """Settings of the step corrections (CLI flags of the same names); all off by default.

    :param eps_scale: ES b (``--eps_scale``); lambda_i = eps_scale_k * i + eps_scale.
    :param eps_scale_k: ES* slope k per respaced step (``--eps_scale_k``).
    :param dcw_low: DCW lambda_l (``--dcw_low``), low-band weight.
    :param dcw_high: DCW lambda_h (``--dcw_high``), high-band weight.

    Order within a step when several are on: ES (before x0_hat), the time-shift target choice,
    the solver update, DCW (after the update); see the module docstring.
    """

    eps_scale: float = 1.0
    eps_scale_k: float = 0.0
    dcw_low: float = 0.0
    dcw_high: float = 0.0

    @property
    def es_active(self) -> bool:
        return self.eps_scale != 1 or self.eps_scale_k != 0

    @property
    def dcw_active(self) -> bool:
        return self.dcw_low != 0 or self.dcw_high != 0

    @property
    def active(self) -> bool:
        """Whether any correction changes sampling."""
        return self.es_active or self.dcw_active

    def validate(self, image_size, num_steps: Optional[int] = None) -> "Corrections":
        """Check the settings; one-line ValueError naming the flag. Returns self.

        :param image_size: int (square) or (H, W); DCW needs both even.
        :param num_steps: S respaced steps; when given, lambda_i > 0 is checked at every step.
        """
        validate_eps_scale(self.eps_scale, self.eps_scale_k, num_steps)
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        validate_dcw(self.dcw_low, self.dcw_high, h, w)
        return self

    def eps_factor(self, step_index: int) -> float:
        """lambda_i at respaced step index i (S - 1 first, 0 last)."""
        return eps_scale_factor(step_index, self.eps_scale, self.eps_scale_k)

    def scaled_model(self, model, step_index: int, channels: int):
        """The network as one step at respaced index i sees it: ES divides the eps channels (the
        first ``channels`` of its (B, C or 2C, H, W) output) by lambda_i; ``model`` itself when ES is off."""
        if not self.es_active:
            return model
        return _EpsScaledModel(model, self.eps_factor(step_index), channels)

    def correct(self, x_next: torch.Tensor, x0_hat: torch.Tensor, alpha_bar_t) -> torch.Tensor:
        """DCW after the update; ``x_next`` itself when DCW is off."""
        return dcw_correct(x_next, x0_hat, self.dcw_low, self.dcw_high, alpha_bar_t=alpha_bar_t)


class _EpsScaledModel:
    """``model`` with :func:`apply_eps_scaling` on the eps channels of its output (see
    :meth:`Corrections.scaled_model`)."""

    def __init__(self, model, lam, channels):
        self.model, self.lam, self.channels = model, lam, channels

    def __call__(self, x, t, **kwargs):
        out = self.model(x, t, **kwargs)
        if out.shape[1] == self.channels:
            return apply_eps_scaling(out, self.lam)
        eps, rest = out[:, : self.channels], out[:, self.channels :]
        return torch.cat([apply_eps_scaling(eps, self.lam), rest], dim=1)
