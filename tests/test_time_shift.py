"""Properties of the time-shift rule and the upstream failure cases."""

import numpy as np
import pytest
import torch

from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.sampler.time_shift import (
    TS_RULES,
    TimeShift,
    edge_fraction,
    is_eligible,
    needs_prediction,
    per_sample_variance,
    shift_target,
    shift_trace,
    shift_window,
    stack_step_picks,
)
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
@pytest.mark.parametrize("rule", ["adm", "pndm", "offset"])
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


# ----------------------------------------------------------------------------- adm-data, offset, trace
def _old_shift_target(x, alphas_cumprod, *, ts, cur, nxt, num_steps):
    """The rule as it stood before adm-data/offset were added (commit d218a66), frozen here."""
    T = alphas_cumprod.shape[0]
    half = ts.window // 2
    centre = cur if ts.rule == "adm" else nxt
    lo, hi = max(centre - half, 0), min(centre + half, T - 1)
    candidates = torch.arange(lo, hi + 1, device=x.device)
    if ts.rule == "adm":
        expected = alphas_cumprod.flip(0)[lo : hi + 1]
    else:
        expected = 1.0 - alphas_cumprod[lo : hi + 1]
    variance = per_sample_variance(x)
    dist = (variance[:, None] - expected[None, :]).square()
    dist = torch.nan_to_num(dist, nan=float("inf"))
    tau = candidates[dist.argmin(dim=1)]
    if ts.rule == "adm":
        off = T // max(num_steps - 1, 1)
        idx = tau - off - 1
        ab = alphas_cumprod[idx.clamp(min=0)]
        target = torch.where(idx >= 0, ab, torch.ones_like(ab))
    else:
        target = alphas_cumprod[tau]
    return tau, target


@pytest.mark.parametrize("rule", ["adm", "pndm"])
def test_old_rules_are_bit_identical(rule):
    torch.manual_seed(3)
    x = torch.randn(16, 3, 8, 8) * torch.linspace(0.05, 1.3, 16).view(16, 1, 1, 1)
    x[3, 0, 0, 0] = float("nan")
    for cur, nxt, window, steps in [(600, 500, 80, 10), (20, 0, 80, 5), (990, 900, 30, 100), (500, 400, 1, 10)]:
        ts = TimeShift(window, 0, rule)
        new = shift_target(x, AB, ts=ts, cur=cur, nxt=nxt, num_steps=steps, x0_hat=x.flip(0))  # x0_hat ignored
        tau, target = _old_shift_target(x, AB, ts=ts, cur=cur, nxt=nxt, num_steps=steps)
        assert torch.equal(new.timesteps, tau) and torch.equal(new.target_alphas_cumprod, target)


def test_rules_and_settings():
    assert set(TS_RULES) == {"adm", "pndm", "adm-data", "offset"}
    assert needs_prediction(TimeShift(80, 300, "adm-data"))
    assert not any(needs_prediction(TimeShift(80, 300, r)) for r in ("adm", "pndm", "offset"))
    assert not needs_prediction(None)
    for rule in ("adm-data", "offset"):  # eligibility and window as "adm": centred on cur, cur > cutoff
        ts = TimeShift(80, 300, rule)
        assert not is_eligible(ts, 900, 800, first_step=True)
        assert is_eligible(ts, 400, 300, first_step=False) and not is_eligible(ts, 300, 200, first_step=False)
        assert not is_eligible(TimeShift(0, 0, rule), 900, 800, first_step=False)
        assert shift_window(ts, 600, 400, T) == (560, 640)
        assert shift_window(ts, 980, 900, T) == (940, 999) and shift_window(ts, 10, 0, T) == (0, 50)
    assert shift_window(TimeShift(80, 300, "pndm"), 600, 400, T) == (360, 440)


def test_adm_data_hand_worked_on_a_tiny_table():
    """T = 10 and a hand-written alpha_bar table; window 4 around cur = 5 -> candidates 3..7."""
    ab = torch.tensor([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], dtype=torch.float64)
    ts = TimeShift(window=4, cutoff=0, rule="adm-data")
    x0_hat = _with_variance([0.5, 0.0 + 1e-12, 0.5], shape=(1, 2, 2), seed=1)
    # sample 0: Var(x0_hat) = 0.5 -> expected(tau) = 1 - 0.5 a_tau = 0.60, 0.65, 0.70, 0.75, 0.80; var 0.74 -> tau 6
    # sample 1: Var(x0_hat) = 0   -> expected(tau) = 1 - a_tau     = 0.20, 0.30, 0.40, 0.50, 0.60; var 0.2  -> tau 3
    # sample 2: Var(x0_hat) = 0.5, var 0.61 -> tau 3 (0.60)
    x = _with_variance([0.74, 0.2, 0.61], shape=(1, 2, 2), seed=2)
    res = shift_target(x, ab, ts=ts, cur=5, nxt=2, num_steps=3, x0_hat=x0_hat)
    assert res.timesteps.tolist() == [6, 3, 3]
    # adm's offset target: off = T // (S - 1) = 5; index tau - 6: 0 -> 0.99; negative -> clean (1.0)
    assert res.target_alphas_cumprod.tolist() == [0.99, 1.0, 1.0]
    # adm on the same states uses the flipped table a[T-1-tau] = 0.5, 0.6, 0.7, 0.8, 0.9 -> different picks
    adm = shift_target(x, ab, ts=TimeShift(4, 0, "adm"), cur=5, nxt=2, num_steps=3)
    assert adm.timesteps.tolist() == [5, 3, 4]


def test_adm_data_needs_the_prediction():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="x0_hat"):
        shift_target(x, AB, ts=TimeShift(80, 0, "adm-data"), cur=500, nxt=400, num_steps=10)


def _at_nominal_level(v0s, cur, shape=(3, 32, 32), seed=0):
    """x_t = sqrt(a) x0 + sqrt(1 - a) eps built exactly: x0 in [-1, 1] with variance v0, eps centred,
    orthogonal to x0 and of unit (unbiased) variance, so Var(x_t) = a Var(x0) + 1 - a to rounding."""
    g = torch.Generator().manual_seed(seed)
    b = len(v0s)
    x0 = (torch.rand((b,) + shape, generator=g, dtype=torch.float64) * 2 - 1).reshape(b, -1)
    x0 = (x0 - x0.mean(1, keepdim=True)) / x0.std(1, keepdim=True)
    x0 = x0 * torch.tensor(v0s, dtype=torch.float64).sqrt()[:, None]
    eps = torch.randn((b, x0.shape[1]), generator=g, dtype=torch.float64)
    eps = eps - eps.mean(1, keepdim=True)
    eps = eps - (eps * x0).sum(1, keepdim=True) / (x0 * x0).sum(1, keepdim=True) * x0
    eps = eps / eps.std(1, keepdim=True)
    a = AB[cur]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    assert x0.abs().max() <= 1.0
    return xt.reshape((b,) + shape).float(), x0.reshape((b,) + shape).float()


@pytest.mark.parametrize("cur", [150, 300, 500, 700, 900, 980])
def test_adm_data_does_not_shift_a_state_at_its_nominal_level(cur):
    x, x0 = _at_nominal_level([0.05, 0.15, 0.3], cur)
    data = shift_target(x, AB, ts=TimeShift(80, 0, "adm-data"), cur=cur, nxt=cur - 50, num_steps=20, x0_hat=x0)
    assert data.timesteps.tolist() == [cur] * 3
    adm = shift_target(x, AB, ts=TimeShift(80, 0, "adm"), cur=cur, nxt=cur - 50, num_steps=20)
    assert (adm.timesteps > cur).all()  # the noise-only table sees data variance as extra noise
    # both use the same offset target for the picked tau
    assert torch.equal(data.target_alphas_cumprod, AB[torch.full((3,), cur - 1000 // 19 - 1)])


def test_adm_data_follows_a_state_off_its_nominal_level():
    """A state built at level 520 while the step is nominally at 500 is matched to 520."""
    x, x0 = _at_nominal_level([0.1, 0.25], 520)
    res = shift_target(x, AB, ts=TimeShift(80, 0, "adm-data"), cur=500, nxt=450, num_steps=20, x0_hat=x0)
    assert res.timesteps.tolist() == [520, 520]


def test_offset_hand_worked():
    x = torch.randn(3, 3, 8, 8) * torch.tensor([0.1, 1.0, 3.0]).view(3, 1, 1, 1)
    res = shift_target(x, AB, ts=TimeShift(80, 300, "offset"), cur=600, nxt=400, num_steps=5)
    assert res.timesteps.tolist() == [640] * 3 and res.timesteps.dtype == torch.int64
    assert torch.equal(res.target_alphas_cumprod, AB[[640 - 250 - 1] * 3])
    top = shift_target(x, AB, ts=TimeShift(80, 0, "offset"), cur=990, nxt=900, num_steps=10)
    assert top.timesteps.tolist() == [999] * 3  # clamped window: min(cur + 40, T - 1)
    assert torch.equal(top.target_alphas_cumprod, AB[[999 - 111 - 1] * 3])


@pytest.mark.parametrize("cur, window, steps", [(600, 80, 5), (990, 30, 100), (350, 200, 10), (60, 80, 20)])
def test_offset_equals_adm_when_every_sample_is_at_the_noisy_edge(cur, window, steps):
    x = _with_variance([1.5, 3.0, 10.0])  # beyond the flipped table's noisy end (< 1)
    adm = shift_target(x, AB, ts=TimeShift(window, 0, "adm"), cur=cur, nxt=cur - 50, num_steps=steps)
    off = shift_target(x, AB, ts=TimeShift(window, 0, "offset"), cur=cur, nxt=cur - 50, num_steps=steps)
    assert torch.equal(adm.timesteps, off.timesteps) and torch.equal(adm.target_alphas_cumprod, off.target_alphas_cumprod)
    # and differs from adm for a sample inside the window
    inside = _with_variance([AB[T - 1 - cur].item()])
    adm_in = shift_target(inside, AB, ts=TimeShift(window, 0, "adm"), cur=cur, nxt=cur - 50, num_steps=steps)
    off_in = shift_target(inside, AB, ts=TimeShift(window, 0, "offset"), cur=cur, nxt=cur - 50, num_steps=steps)
    assert adm_in.timesteps.item() == cur and off_in.timesteps.item() == min(cur + window // 2, T - 1)


def test_edge_fraction_hand_worked():
    picks = torch.tensor([[-1, 460, 500, 470],
                          [-1, 540, 470, -1]], dtype=torch.int32)
    lo = torch.tensor([-1, 460, 450, 460])
    hi = torch.tensor([-1, 540, 530, 470])
    # shifted: 5 picks; on an edge: 460 (lo), 540 (hi), 470 (hi of step 3) -> 3/5
    assert edge_fraction(picks, lo, hi) == pytest.approx(3 / 5)
    assert edge_fraction(picks, lo, hi, side="noisy") == pytest.approx(2 / 5)
    assert edge_fraction(picks, lo, hi, side="clean") == pytest.approx(1 / 5)
    assert edge_fraction(torch.tensor([500, 520]), 480, 520) == 0.5  # scalar window
    assert np.isnan(edge_fraction(torch.full((2, 3), -1), lo[:3], hi[:3]))
    with pytest.raises(ValueError, match="side"):
        edge_fraction(picks, lo, hi, side="left")


@pytest.mark.parametrize("rule, want", [("offset", 1.0), ("adm", None)])
def test_trace_from_a_sequence_of_steps(rule, want):
    ts = TimeShift(40, 300, rule)
    nominal = [900, 700, 500, 300, 100]
    # sample 0 beyond the noisy end, 3 beyond the clean end; 1 on the table at 700, 2 at 500
    x = _with_variance([1.5, AB[T - 1 - 700].item(), AB[T - 1 - 500].item(), 1e-4])
    picks, lows, highs = [], [], []
    for step, cur in enumerate(nominal):
        nxt = nominal[step + 1] if step + 1 < len(nominal) else -1
        if is_eligible(ts, cur, nxt, first_step=step == 0):
            picks.append(shift_target(x, AB, ts=ts, cur=cur, nxt=nxt, num_steps=5).timesteps)
            lo, hi = shift_window(ts, cur, nxt, T)
        else:
            picks.append(None)
            lo = hi = -1
        lows.append(lo)
        highs.append(hi)
    stacked = stack_step_picks(picks, batch=4)
    assert stacked.shape == (4, 5) and stacked.dtype == torch.int32
    assert (stacked[:, 0] == -1).all() and (stacked[:, 3:] == -1).all()  # first step; cur <= cutoff
    assert ((stacked[:, 1:3] >= torch.tensor([680, 480])) & (stacked[:, 1:3] <= torch.tensor([720, 520]))).all()
    trace = shift_trace(stacked, nominal, lows, highs)
    assert trace["timesteps"].dtype == torch.int32 and trace["nominal"].tolist() == nominal
    assert trace["window_lo"].tolist() == [-1, 680, 480, -1, -1]
    assert trace["edge_fraction"].dtype == torch.float64 and trace["edge_fraction"].ndim == 0
    if want is not None:
        assert trace["edge_fraction"].item() == want and trace["noisy_edge_fraction"].item() == want
    else:
        # step 700: 720, 700, 680, 680; step 500: 520, 520, 500, 480 -> 6 of 8 on an edge, 3 noisy
        assert stacked[:, 1:3].tolist() == [[720, 520], [700, 520], [680, 500], [680, 480]]
        assert trace["edge_fraction"].item() == 0.75 and trace["noisy_edge_fraction"].item() == 3 / 8
