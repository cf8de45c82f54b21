"""Epsilon Scaling and DCW (guided_diffusion/sampler/corrections.py): hand computations, identities, validation."""

import math

import pytest
import torch

from guided_diffusion.sampler.corrections import (
    Corrections,
    apply_eps_scaling,
    dcw_correct,
    dcw_weights,
    eps_scale_factor,
    haar_low_band,
    validate_dcw,
    validate_eps_scale,
)


def _one_line_error(fn, *flags):
    """Call ``fn``, expect a ValueError whose message is a single line naming every flag."""
    with pytest.raises(ValueError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    for flag in flags:
        assert flag in msg, (flag, msg)
    return msg


# ----------------------------------------------------------------------------- Epsilon Scaling
def test_eps_scale_factor_hand_values():
    assert eps_scale_factor(0, 1.017) == 1.017  # uniform: b at every step
    assert eps_scale_factor(49, 1.017) == 1.017
    # ES* (Ning et al.): k = 0.0025, b = 1.0 at 20 steps: lambda_19 = 1.0475 first, lambda_0 = 1.0 last.
    assert eps_scale_factor(19, 1.0, 0.0025) == pytest.approx(1.0475, abs=1e-15)
    assert eps_scale_factor(0, 1.0, 0.0025) == 1.0
    assert Corrections(eps_scale=1.0, eps_scale_k=0.0025).eps_factor(10) == pytest.approx(1.025, abs=1e-15)


def test_apply_eps_scaling_divides():
    eps = torch.tensor([[[[2.0, -4.0], [1.0, 0.5]]]])
    assert torch.equal(apply_eps_scaling(eps, 2.0), torch.tensor([[[[1.0, -2.0], [0.5, 0.25]]]]))
    # the network as the loop's step i sees it; step i = 2 with b = 1, k = 0.5 -> lambda = 2
    net = lambda x, t: x  # noqa: E731
    assert torch.equal(Corrections(eps_scale=1.0, eps_scale_k=0.5).scaled_model(net, 2, 1)(eps, 0), eps / 2)
    assert torch.equal(Corrections(eps_scale=1.25).scaled_model(net, 7, 1)(eps, 0), eps / 1.25)
    # learned sigma: only the first C (eps) channels are scaled, the variance channels pass through
    both = torch.cat([eps, eps + 3], dim=1)
    out = Corrections(eps_scale=2.0).scaled_model(net, 0, 1)(both, 0)
    assert torch.equal(out[:, :1], eps / 2) and torch.equal(out[:, 1:], eps + 3)


def test_eps_scale_one_is_the_identity_object():
    eps = torch.randn(2, 3, 4, 4)
    assert apply_eps_scaling(eps, 1.0) is eps
    assert apply_eps_scaling(eps, 1) is eps
    net = lambda x, t: x  # noqa: E731
    assert Corrections().scaled_model(net, 19, 3) is net
    assert Corrections(eps_scale=1.0, eps_scale_k=0.0).scaled_model(net, 0, 3) is net
    # ES* at its last step has lambda_0 = b = 1: nothing to do, still bit-identical
    assert Corrections(eps_scale=1.0, eps_scale_k=0.01).scaled_model(net, 0, 3)(eps, 0) is eps
    assert apply_eps_scaling(eps, 1.0001) is not eps


@pytest.mark.parametrize("b, k, steps, flags", [
    (0.0, 0.0, None, ["--eps_scale"]),
    (-1.0, 0.0, 20, ["--eps_scale"]),
    (float("nan"), 0.0, None, ["--eps_scale"]),
    (float("inf"), 0.0, None, ["--eps_scale"]),
    (1.0, float("nan"), None, ["--eps_scale_k"]),
    (1.0, -0.1, 20, ["--eps_scale", "--eps_scale_k"]),  # lambda_19 = 1 - 1.9 < 0
    (1.0, -0.05, 21, ["--eps_scale", "--eps_scale_k"]),  # lambda_20 = 0 exactly: not > 0
])
def test_eps_scale_validation(b, k, steps, flags):
    _one_line_error(lambda: validate_eps_scale(b, k, steps), *flags)
    _one_line_error(lambda: Corrections(eps_scale=b, eps_scale_k=k).validate(32, num_steps=steps), *flags)


def test_eps_scale_validation_accepts_valid_settings():
    validate_eps_scale(1.0, 0.0)
    validate_eps_scale(1.0, -0.01, 20)  # lambda_19 = 0.81 > 0
    validate_eps_scale(0.9, 0.0025, 1000)
    assert Corrections(eps_scale=1.017).validate(32, num_steps=50).eps_scale == 1.017


# ----------------------------------------------------------------------------- DCW
def _haar_matrix():
    """Orthonormal 2D Haar on a 2x2 block [a, b; c, d] (flattened a, b, c, d) -> [LL, LH, HL, HH]."""
    h = 0.5 * torch.tensor([
        [1.0, 1.0, 1.0, 1.0],    # LL
        [1.0, 1.0, -1.0, -1.0],  # LH: top minus bottom
        [1.0, -1.0, 1.0, -1.0],  # HL: left minus right
        [1.0, -1.0, -1.0, 1.0],  # HH: diagonal
    ], dtype=torch.float64)
    assert torch.allclose(h @ h.T, torch.eye(4, dtype=torch.float64))  # orthonormal
    return h


def _to_blocks(x):
    """(B, C, H, W) -> (B, C, H/2, W/2, 4) with the 2x2 block flattened row-major."""
    b, c, hh, ww = x.shape
    return x.reshape(b, c, hh // 2, 2, ww // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(b, c, hh // 2, ww // 2, 4)


def _from_blocks(blocks):
    b, c, h2, w2, _ = blocks.shape
    return blocks.reshape(b, c, h2, w2, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(b, c, 2 * h2, 2 * w2)


def _haar_bands(r):
    """Reconstruction from LL only and from (LH, HL, HH) only, via the explicit orthonormal transform."""
    h = _haar_matrix()
    coeffs = _to_blocks(r) @ h.T  # analysis: (..., 4) coefficients LL, LH, HL, HH
    keep_ll = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    low = _from_blocks((coeffs * keep_ll) @ h)  # synthesis with h^-1 = h^T
    high = _from_blocks((coeffs * (1 - keep_ll)) @ h)
    return low, high


def test_explicit_haar_is_a_perfect_reconstruction():
    r = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    low, high = _haar_bands(r)
    assert torch.allclose(low + high, r, atol=1e-12)


def test_avgpool_low_band_equals_orthonormal_haar_ll():
    torch.manual_seed(0)
    r = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    low, high = _haar_bands(r)
    assert torch.allclose(haar_low_band(r), low, atol=1e-12)
    assert torch.allclose(r - haar_low_band(r), high, atol=1e-12)
    # and so DCW is exactly the Haar-domain correction of the LL and the detail bands
    x0 = torch.randn_like(r)
    x_next = x0 + r
    a = torch.tensor([0.3, 0.8], dtype=torch.float64)
    w_low, w_high = dcw_weights(0.05, -0.02, a)
    want = x_next + w_low.view(2, 1, 1, 1) * low + w_high.view(2, 1, 1, 1) * high
    assert torch.allclose(dcw_correct(x_next, x0, 0.05, -0.02, alpha_bar_t=a), want, atol=1e-12)


def test_dcw_weight_schedule():
    # p = sqrt(1 - a) = 0.6 at a = 0.64: w_low = 0.1 * 0.6, w_high = 0.2 * (1 - 0.6)
    w_low, w_high = dcw_weights(0.1, 0.2, 0.64)
    assert w_low == pytest.approx(0.06, abs=1e-15) and w_high == pytest.approx(0.08, abs=1e-15)
    assert dcw_weights(0.1, 0.2, 1.0) == (0.0, 0.2)  # clean end: high bands only
    assert dcw_weights(0.1, 0.2, 0.0) == (0.1, 0.0)  # pure noise: low band only
    wl, wh = dcw_weights(0.1, 0.2, torch.tensor([0.64, 0.36], dtype=torch.float64))
    assert torch.allclose(wl, torch.tensor([0.06, 0.08], dtype=torch.float64))
    assert torch.allclose(wh, torch.tensor([0.08, 0.04], dtype=torch.float64))


def test_dcw_hand_computation():
    x0 = torch.zeros(1, 1, 2, 4, dtype=torch.float64)
    x_next = torch.tensor([[[[1.0, 2.0, 0.0, 0.0],
                             [3.0, 6.0, 0.0, 4.0]]]], dtype=torch.float64)
    # r = x_next; block means 3 and 1 -> low = [[3, 3, 1, 1], [3, 3, 1, 1]], high = r - low
    # a = 0.64 -> w_low = 0.1 * 0.6 = 0.06, w_high = 0.2 * 0.4 = 0.08
    want = torch.tensor([[[[1 + 0.06 * 3 + 0.08 * -2, 2 + 0.06 * 3 + 0.08 * -1, 0 + 0.06 * 1 + 0.08 * -1, 0 + 0.06 * 1 + 0.08 * -1],
                           [3 + 0.06 * 3 + 0.08 * 0, 6 + 0.06 * 3 + 0.08 * 3, 0 + 0.06 * 1 + 0.08 * -1, 4 + 0.06 * 1 + 0.08 * 3]]]],
                        dtype=torch.float64)
    assert torch.allclose(dcw_correct(x_next, x0, 0.1, 0.2, alpha_bar_t=0.64), want, atol=1e-14)
    # the correction acts on x_next - x0_hat, not on x_next
    shifted = dcw_correct(x_next + 5, x0 + 5, 0.1, 0.2, alpha_bar_t=0.64)
    assert torch.allclose(shifted, want + 5, atol=1e-13)
    # a float progress and a per-sample (B,) progress agree
    per_sample = dcw_correct(x_next, x0, 0.1, 0.2, alpha_bar_t=torch.tensor([0.64], dtype=torch.float64))
    assert torch.allclose(per_sample, want, atol=1e-14)
    assert torch.allclose(Corrections(dcw_low=0.1, dcw_high=0.2).correct(x_next, x0, 0.64), want, atol=1e-14)


def test_dcw_bands_separately_and_sign():
    torch.manual_seed(1)
    x0 = torch.randn(3, 3, 8, 8)
    x_next = x0 + torch.randn(3, 3, 8, 8)
    a = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    low_only = dcw_correct(x_next, x0, 0.1, 0.0, alpha_bar_t=a) - x_next
    assert torch.allclose(low_only, haar_low_band(low_only), atol=1e-6)  # constant on each 2x2 block
    high_only = dcw_correct(x_next, x0, 0.0, 0.1, alpha_bar_t=a) - x_next
    assert torch.allclose(haar_low_band(high_only), torch.zeros_like(high_only), atol=1e-6)  # no LL part
    # positive weights push x_{t-1} away from x0_hat; negative ones pull it towards x0_hat
    d0 = (x_next - x0).flatten(1).norm(dim=1)
    assert ((dcw_correct(x_next, x0, 0.1, 0.1, alpha_bar_t=a) - x0).flatten(1).norm(dim=1) > d0).all()
    assert ((dcw_correct(x_next, x0, -0.1, -0.1, alpha_bar_t=a) - x0).flatten(1).norm(dim=1) < d0).all()
    # per-sample progress: sample b uses its own alpha_bar
    both = dcw_correct(x_next, x0, 0.1, 0.05, alpha_bar_t=a)
    for b in range(3):
        alone = dcw_correct(x_next[b : b + 1], x0[b : b + 1], 0.1, 0.05, alpha_bar_t=float(a[b]))
        assert torch.allclose(both[b : b + 1], alone, atol=1e-6)


def test_dcw_zero_is_the_identity_object():
    x_next, x0 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert dcw_correct(x_next, x0, 0.0, 0.0, alpha_bar_t=0.5) is x_next
    assert dcw_correct(x_next, x0, 0, 0, alpha_bar_t=torch.tensor([0.1, 0.2])) is x_next
    assert Corrections().correct(x_next, x0, 0.5) is x_next
    assert Corrections(eps_scale=1.01).correct(x_next, x0, 0.5) is x_next  # ES on, DCW off
    # odd sizes are fine while DCW is off
    odd = torch.randn(1, 3, 5, 7)
    assert dcw_correct(odd, odd, 0.0, 0.0, alpha_bar_t=0.5) is odd
    assert dcw_correct(x_next, x0, 0.01, 0.0, alpha_bar_t=0.5) is not x_next


def test_dcw_validation():
    odd = torch.randn(1, 3, 5, 8)
    _one_line_error(lambda: dcw_correct(odd, odd, 0.1, 0.0, alpha_bar_t=0.5), "--dcw_low", "--dcw_high")
    _one_line_error(lambda: dcw_correct(odd.transpose(2, 3), odd.transpose(2, 3), 0.0, 0.1, alpha_bar_t=0.5),
                    "--dcw_low", "--dcw_high")
    _one_line_error(lambda: Corrections(dcw_low=0.02).validate(33), "--dcw_low", "--dcw_high")
    _one_line_error(lambda: Corrections(dcw_high=0.02).validate((32, 31)), "--dcw_high")
    _one_line_error(lambda: Corrections(dcw_low=float("nan")).validate(32), "--dcw_low")
    _one_line_error(lambda: Corrections(dcw_high=float("inf")).validate(32), "--dcw_high")
    x = torch.randn(1, 3, 4, 4)
    _one_line_error(lambda: dcw_correct(x, x, float("nan"), 0.0, alpha_bar_t=0.5), "--dcw_low")
    Corrections().validate(33)  # DCW off: odd sizes are fine
    Corrections(dcw_low=-0.05, dcw_high=0.01).validate(64)
    validate_dcw(0.1, 0.0, 64, 32)


# ----------------------------------------------------------------------------- settings
def test_active_flags():
    assert not Corrections().active
    assert Corrections(eps_scale=1.004).active and Corrections(eps_scale=1.004).es_active
    assert Corrections(eps_scale_k=0.0025).es_active and not Corrections(eps_scale_k=0.0025).dcw_active
    assert Corrections(dcw_low=0.02).dcw_active and Corrections(dcw_high=-0.01).active
    assert not Corrections(eps_scale=1.0, eps_scale_k=0.0, dcw_low=0.0, dcw_high=0.0).active


@pytest.mark.parametrize("kwargs, suffix", [
    ({}, ""),
    ({"eps_scale": 1.004}, "_es1.004"),
    ({"eps_scale_k": 0.0025}, "_esk0.0025"),
    ({"eps_scale": 1.017, "eps_scale_k": 0.0025}, "_es1.017_esk0.0025"),
    ({"dcw_low": 0.02}, "_dcw0.02"),
    ({"dcw_high": 0.01}, "_dcwh0.01"),
    ({"dcw_low": -0.05, "dcw_high": 0.01}, "_dcw-0.05_dcwh0.01"),
    ({"eps_scale": 1.0012, "dcw_low": 0.052, "dcw_high": 0.01}, "_es1.0012_dcw0.052_dcwh0.01"),
    ({"eps_scale": 2.0}, "_es2"),
    ({"eps_scale": 1.000125}, "_es1.000125"),  # no rounding to 6 significant digits
])
def test_name_suffix(kwargs, suffix):
    from guided_diffusion.settings import SamplerConfig, name_suffix

    assert name_suffix(SamplerConfig(**kwargs)) == suffix


def test_name_suffix_round_trips():
    import re

    from guided_diffusion.settings import SamplerConfig, name_suffix

    c = SamplerConfig(eps_scale=1.0000001, eps_scale_k=1e-05, dcw_low=-0.0125, dcw_high=0.1 + 0.2)
    parts = dict(re.findall(r"_(esk|es|dcwh|dcw)([-0-9.e]+)", name_suffix(c)))
    assert float(parts["es"]) == c.eps_scale and float(parts["esk"]) == c.eps_scale_k
    assert float(parts["dcw"]) == c.dcw_low and float(parts["dcwh"]) == c.dcw_high
    assert not math.isnan(float(parts["dcwh"]))
