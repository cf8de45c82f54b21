"""Properties of the time-shift rule and the upstream failure cases."""

import numpy as np
import pytest
import torch

from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.time_shift import TimeShift, is_eligible, per_sample_variance, shift_target
from reference_models import AnalyticEpsModel

T = 1000
AB = torch.from_numpy(create_gaussian_diffusion(noise_schedule="cosine").base_alphas_cumprod)


def _with_variance(variances, shape=(3, 8, 8), seed=0):
    """A batch whose per-sample unbiased variance is exactly ``variances``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((len(variances),) + shape, generator=g, dtype=torch.float64)
    flat = z.reshape(len(variances), -1)
    flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)
    return (flat * torch.tensor(variances, dtype=torch.float64).sqrt()[:, None]).reshape(z.shape).float()


def test_per_sample_variance_matches_torch_var():
    x = torch.randn(16, 3, 32, 32) * 0.7 + 0.1
    assert torch.allclose(per_sample_variance(x), x.reshape(16, -1).double().var(dim=1), rtol=1e-6)


def test_eligibility():
    adm = TimeShift(window=80, cutoff=300)
    assert not is_eligible(adm, 900, 800, first_step=True)  # never the first step
    assert is_eligible(adm, 400, 300, first_step=False)
    assert not is_eligible(adm, 300, 200, first_step=False)  # strict cur > cutoff
    pndm = TimeShift(window=80, cutoff=300, rule="pndm")
    assert not is_eligible(pndm, 400, 300, first_step=False)  # pndm tests the next timestep
    assert is_eligible(pndm, 500, 400, first_step=False)
    assert not is_eligible(TimeShift(window=0, cutoff=0), 900, 800, first_step=False)


def test_invalid_settings():
    with pytest.raises(ValueError, match="window"):
        TimeShift(window=-1, cutoff=300)
    with pytest.raises(ValueError, match="ts_rule"):
        TimeShift(window=4, cutoff=300, rule="dpm")


def test_hand_worked_adm_example():
    """Variances placed exactly on the flipped table at tau = 620, 570, 640 (window 80 around 600)."""
    taus = [620, 570, 640]
    x = _with_variance([AB[T - 1 - tau].item() for tau in taus])
    res = shift_target(x, AB, ts=TimeShift(80, 300), cur=600, nxt=400, num_steps=5)
    assert res.timesteps.tolist() == taus
    off = T // (5 - 1)  # 250
    assert torch.allclose(res.target_alphas_cumprod, AB[[tau - off - 1 for tau in taus]])


def test_window_saturates_and_stays_in_bounds():
    x = _with_variance([1e-6, 0.5, 10.0, 0.3])
    for cur in (40, 500, 990):
        res = shift_target(x, AB, ts=TimeShift(80, 0), cur=cur, nxt=cur - 100, num_steps=10)
        assert ((res.timesteps >= max(cur - 40, 0)) & (res.timesteps <= min(cur + 40, T - 1))).all()
    res = shift_target(x, AB, ts=TimeShift(80, 0), cur=500, nxt=400, num_steps=10)
    assert res.timesteps[0] == 460 and res.timesteps[2] == 540  # tiny var -> lowest, huge -> highest


def test_pndm_rule_hand_worked():
    taus = [410, 380, 395]
    x = _with_variance([1 - AB[tau].item() for tau in taus])
    res = shift_target(x, AB, ts=TimeShift(40, 300, rule="pndm"), cur=500, nxt=400, num_steps=10)
    assert res.timesteps.tolist() == taus
    assert torch.allclose(res.target_alphas_cumprod, AB[taus])


def test_permutation_equivariance_and_repeatability():
    x = torch.randn(6, 3, 8, 8) * torch.linspace(0.3, 1.2, 6).view(6, 1, 1, 1)
    ts = TimeShift(40, 100)
    a = shift_target(x, AB, ts=ts, cur=500, nxt=400, num_steps=10)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    b = shift_target(x[perm], AB, ts=ts, cur=500, nxt=400, num_steps=10)
    assert torch.equal(a.timesteps[perm], b.timesteps)
    assert torch.equal(shift_target(x, AB, ts=ts, cur=500, nxt=400, num_steps=10).timesteps, a.timesteps)


def test_negative_target_index_is_clean_not_wrapped():
    x = _with_variance([1e-8])
    res = shift_target(x, AB, ts=TimeShift(80, 0), cur=200, nxt=0, num_steps=5)  # 160 - 250 - 1 < 0
    assert res.target_alphas_cumprod.item() == 1.0


def test_nan_sample_picks_lowest_candidate():
    x = torch.randn(2, 3, 8, 8)
    x[1, 0, 0, 0] = float("nan")
    res = shift_target(x, AB, ts=TimeShift(20, 0), cur=500, nxt=400, num_steps=10)
    assert res.timesteps[1] == 490


def _analytic(diffusion, learn_sigma=True, delta=0.1):
    mu = torch.linspace(-0.3, 0.3, 3 * 8 * 8).reshape(1, 3, 8, 8)
    return AnalyticEpsModel(mu, 0.5, delta, diffusion.base_alphas_cumprod, learn_sigma=learn_sigma)


@pytest.mark.parametrize("respacing, window, cutoff", [
    ("100", 30, 300),   # upstream: NaN (target noisier than current, 0 * NaN)
    ("ddim5", 80, 0),   # upstream: index wrap + NaN at cutoff 0
    ("100", 30, 0),     # windows past the top (cur = 989) and near 0
    ("ddim10", 200, 0),
])
@pytest.mark.parametrize("rule", ["adm", "pndm"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_upstream_nan_cases_are_finite(respacing, window, cutoff, rule, sampler):
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, timestep_respacing=respacing,
                                  do_time_shift=True, window=window, cutoff=cutoff, ts_rule=rule)
    torch.manual_seed(0)
    noise = torch.randn(4, 3, 8, 8) * torch.tensor([1.0, 1.3, 0.7, 1.1]).view(4, 1, 1, 1)
    loop = d.ddim_sample_loop if sampler == "ddim" else d.p_sample_loop
    out = loop(_analytic(d), (4, 3, 8, 8), noise=noise)
    assert torch.isfinite(out).all()
    assert out.abs().max() <= 1.0 + 1e-6  # last step returns the clipped x0 prediction


def test_per_sample_independence_in_the_loop():
    """A sample's TS-DDIM result does not depend on which other samples share its batch."""
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, timestep_respacing="ddim10",
                                  do_time_shift=True, window=40, cutoff=300)
    torch.manual_seed(1)
    noise = torch.randn(4, 3, 8, 8) * torch.tensor([1.0, 1.2, 0.8, 1.05]).view(4, 1, 1, 1)
    model = _analytic(d)
    together = d.ddim_sample_loop(model, noise.shape, noise=noise)
    for b in range(4):
        alone = d.ddim_sample_loop(model, (1, 3, 8, 8), noise=noise[b : b + 1])
        assert torch.allclose(alone[0], together[b], atol=1e-6)
