"""The loop driver: DDPM / DDIM parity with upstream's formulas, TS-DDPM, guidance, hooks."""

import numpy as np
import pytest
import torch

from guided_diffusion.gaussian_diffusion import ModelVarType
from guided_diffusion.script_util import create_gaussian_diffusion
from guided_diffusion.sampler.loop import Sampler, final_sample, sample_loop_progressive
from guided_diffusion.sampler.time_shift import TimeShift
from reference_models import AnalyticEpsModel

SHAPE = (3, 3, 8, 8)


def _model(d, learn_sigma=True):
    mu = torch.linspace(-0.3, 0.3, 3 * 8 * 8).reshape(1, 3, 8, 8)
    return AnalyticEpsModel(mu, 0.5, 0.1, d.base_alphas_cumprod, learn_sigma=learn_sigma)


class LearnedVarModel(AnalyticEpsModel):
    """Analytic eps plus a non-trivial variance channel v = tanh(x) (LEARNED_RANGE input)."""

    def forward(self, x, t, **kw):
        eps = super().forward(x, t)[:, :3]
        return torch.cat([eps, torch.tanh(x)], dim=1)


def _noises(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g) for _ in range(n)]


def _upstream_p_sample_loop(d, model, x, noises):
    """guided-diffusion's p_sample loop, written out from its equations with float64 tables."""
    ex = lambda arr, i: torch.from_numpy(np.asarray(arr))[torch.full((x.shape[0],), i)].float().view(-1, 1, 1, 1)  # noqa
    for k, i in enumerate(range(d.num_timesteps - 1, -1, -1)):
        t_orig = torch.full((x.shape[0],), d.timestep_map[i])
        out = model(x, t_orig)
        eps, v = out[:, :3], out[:, 3:]
        x0 = (ex(d.sqrt_recip_alphas_cumprod, i) * x - ex(d.sqrt_recipm1_alphas_cumprod, i) * eps).clamp(-1, 1)
        mean = ex(d.posterior_mean_coef1, i) * x0 + ex(d.posterior_mean_coef2, i) * x
        min_log, max_log = ex(d.posterior_log_variance_clipped, i), ex(np.log(d.betas), i)
        frac = (v + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        nonzero = float(i != 0)
        x = mean + nonzero * torch.exp(0.5 * log_var) * noises[k]
    return x


@pytest.mark.parametrize("respacing", ["", "10", "ddim5"])
def test_ddpm_loop_matches_upstream_equations(respacing):
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, steps=50 if not respacing
                                  else 1000, timestep_respacing=respacing)
    model = LearnedVarModel(torch.zeros(1, 3, 8, 8), 0.5, 0.1, d.base_alphas_cumprod)
    x_T = torch.randn(SHAPE)
    noises = _noises(d.num_timesteps)
    ours = d.p_sample_loop(model, SHAPE, noise=x_T.clone(), noise_fn=lambda step, like: noises[step])
    theirs = _upstream_p_sample_loop(d, model, x_T.clone(), noises)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_shift_off_is_bit_identical(sampler):
    """do_time_shift=False == a Sampler without time shift == a cutoff above every step == window 0."""
    results = []
    for ts_kwargs in (dict(do_time_shift=False), dict(do_time_shift=True, window=40, cutoff=5000),
                      dict(do_time_shift=True, window=0, cutoff=0)):
        d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, timestep_respacing="10", **ts_kwargs)
        noises = _noises(10)
        loop = d.ddim_sample_loop if sampler == "ddim" else d.p_sample_loop
        results.append(loop(_model(d), SHAPE, noise=torch.ones(SHAPE) * 0.9, noise_fn=lambda s, like: noises[s]))
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, timestep_respacing="10",
                                  do_time_shift=True, window=40, cutoff=0)
    noises = _noises(10)
    results.append(final_sample(sample_loop_progressive(
        d, _model(d), SHAPE, Sampler(sampler, time_shift=None), noise=torch.ones(SHAPE) * 0.9,
        noise_fn=lambda s, like: noises[s])))
    for r in results[1:]:
        assert torch.equal(r, results[0])


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("rule", ["adm", "pndm"])
def test_progressive_reports_shifted_timesteps(sampler, rule):
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, timestep_respacing="ddim10",
                                  do_time_shift=True, window=40, cutoff=300, ts_rule=rule)
    loop = d.ddim_sample_loop_progressive if sampler == "ddim" else d.p_sample_loop_progressive
    steps = list(loop(_model(d), SHAPE, noise=torch.randn(SHAPE) * 1.1))
    assert [s["timestep"] for s in steps] == list(range(900, -1, -100))
    assert steps[0]["shifted_timesteps"] is None  # never the first step
    for s in steps[1:]:
        centre = s["timestep"] if rule == "adm" else s["timestep"] - 100
        if centre > 300:
            assert s["shifted_timesteps"].shape == (3,)
            assert ((s["shifted_timesteps"] - centre).abs() <= 20).all()
        else:
            assert s["shifted_timesteps"] is None


@pytest.mark.parametrize("var_type", ["FIXED_SMALL", "FIXED_LARGE", "LEARNED_RANGE", "LEARNED"])
def test_ts_ddpm_step_to_nominal_target_equals_plain_step(var_type):
    """The shifted-posterior formulas reduce to the nominal step when the target is the nominal one."""
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=var_type.startswith("LEARNED"),
                                  sigma_small=var_type == "FIXED_SMALL", timestep_respacing="20")
    if var_type == "LEARNED":
        d.model_var_type = ModelVarType.LEARNED
    assert d.model_var_type.name == var_type
    model = LearnedVarModel(torch.zeros(1, 3, 8, 8), 0.5, 0.1, d.base_alphas_cumprod,
                            learn_sigma=var_type.startswith("LEARNED"))
    if not var_type.startswith("LEARNED"):
        model = _model(d, learn_sigma=False)
    x = torch.randn(SHAPE)
    z = torch.randn(SHAPE)
    for i in (19, 10, 3):
        t = torch.full((3,), i)
        plain = d.ddpm_step(model, x, t, draw_noise=lambda: z)
        target = torch.from_numpy(d.alphas_cumprod_prev[[i] * 3])
        shifted = d.ddpm_step(model, x, t, target_alphas_cumprod=target, draw_noise=lambda: z)
        assert torch.allclose(plain["sample"], shifted["sample"], atol=2e-5), i


def test_ts_ddpm_noisier_target_is_deterministic_renoise():
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, timestep_respacing="10")
    x, t = torch.randn(SHAPE), torch.full((3,), 5)
    a = d.alphas_cumprod[5]
    target = torch.full((3,), a * 0.8, dtype=torch.float64)  # noisier than the current state
    out = d.ddpm_step(_model(d), x, t, target_alphas_cumprod=target, draw_noise=lambda: torch.full(SHAPE, 1e3))
    x0 = out["pred_xstart"]
    eps = d._predict_eps_from_xstart(x, t, x0)
    expected = x0 * np.sqrt(a * 0.8) + np.sqrt(1 - a * 0.8) * eps
    assert torch.allclose(out["sample"], expected, atol=1e-5)


def test_ddim_eta_noise_only_when_needed():
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, timestep_respacing="ddim5")
    calls = []
    fn = lambda step, like: calls.append(step) or torch.zeros_like(like)  # noqa: E731
    d.ddim_sample_loop(_model(d), SHAPE, noise=torch.randn(SHAPE), eta=0.0, noise_fn=fn)
    assert calls == []
    d.ddim_sample_loop(_model(d), SHAPE, noise=torch.randn(SHAPE), eta=1.0, noise_fn=fn)
    assert calls == [0, 1, 2, 3]  # not on the last step
    calls.clear()
    d.p_sample_loop(_model(d), SHAPE, noise=torch.randn(SHAPE), noise_fn=fn)
    assert calls == [0, 1, 2, 3]


def test_ddim_eta_one_equals_ddpm_fixed_small_in_distribution_terms():
    """DDIM with eta = 1 has DDPM's posterior variance: same noise -> same sample (Song et al. 4.1)."""
    d = create_gaussian_diffusion(noise_schedule="cosine", sigma_small=True, timestep_respacing="10")
    model = _model(d, learn_sigma=False)
    x_T, noises = torch.randn(SHAPE), _noises(10)
    a = d.ddim_sample_loop(model, SHAPE, noise=x_T, eta=1.0, noise_fn=lambda s, like: noises[s])
    b = d.p_sample_loop(model, SHAPE, noise=x_T, noise_fn=lambda s, like: noises[s])
    assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_cond_fn_guidance(sampler):
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, timestep_respacing="ddim5")
    loop = d.ddim_sample_loop if sampler == "ddim" else d.p_sample_loop
    x_T, noises = torch.randn(SHAPE), _noises(5)
    kw = dict(noise=x_T, noise_fn=lambda s, like: noises[s], model_kwargs={"y": torch.tensor([0, 1, 2])})
    seen = []

    def zero_grad(x, t, y=None):
        seen.append((t.clone(), y))
        return torch.zeros_like(x)

    def model(x, t, y=None):
        return _model(d)(x, t)

    plain = loop(model, SHAPE, **kw)
    guided_zero = loop(model, SHAPE, cond_fn=zero_grad, **kw)
    assert torch.allclose(plain, guided_zero, atol=1e-6)
    assert seen[0][0].tolist() == [800] * 3 and seen[0][1].tolist() == [0, 1, 2]  # original timestep, labels
    guided = loop(model, SHAPE, cond_fn=lambda x, t, y=None: torch.ones_like(x), **kw)
    assert (guided - plain).mean() > 1e-3  # pushed towards +grad


def test_denoised_fn_and_clip():
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, timestep_respacing="ddim5")
    out = d.ddim_sample_loop(_model(d), SHAPE, noise=torch.randn(SHAPE), denoised_fn=lambda x0: x0 * 0)
    assert out.abs().max() < 1e-6
    out = d.ddim_sample_loop(lambda x, t: torch.cat([-5 * x, 0 * x], 1), SHAPE, noise=torch.randn(SHAPE),
                             clip_denoised=False)
    assert out.abs().max() > 1.0


def test_loop_accepts_plain_callable_and_device():
    d = create_gaussian_diffusion(noise_schedule="linear", timestep_respacing="ddim5")
    out = d.ddim_sample_loop(lambda x, t: torch.zeros_like(x), (2, 3, 8, 8), device="cpu", progress=True)
    assert out.shape == (2, 3, 8, 8)
    out = d.p_sample_loop(lambda x, t: torch.zeros_like(x), (2, 3, 8, 8))
    assert torch.isfinite(out).all()


def test_explicit_time_shift_overrides_the_diffusion_default():
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, timestep_respacing="ddim10")
    x_T = torch.randn(SHAPE) * 1.2
    plain = d.ddim_sample_loop(_model(d), SHAPE, noise=x_T)
    shifted = d.ddim_sample_loop(_model(d), SHAPE, noise=x_T, time_shift=TimeShift(40, 300))
    assert (plain - shifted).abs().max() > 1e-3


# ------------------------------------------------------------------ corrections and solvers in the loop
from guided_diffusion.sampler.corrections import Corrections, dcw_correct  # noqa: E402
from guided_diffusion.sampler.solvers import eps_from_x0, get_solver, nfe  # noqa: E402
from guided_diffusion.sampler.time_shift import shift_target  # noqa: E402


def _loop(d, model, sampler, x_T=None, noises=None):
    x_T = torch.ones(SHAPE) * 0.9 if x_T is None else x_T
    kw = {} if noises is None else {"noise_fn": lambda s, like: noises[s]}
    return final_sample(sample_loop_progressive(d, model, SHAPE, sampler, noise=x_T.clone(), **kw))


@pytest.mark.parametrize("kind", ["ddim", "ddpm", "dpm++2m", "ipndm", "f-pndm"])
def test_corrections_off_are_bit_identical(kind):
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, timestep_respacing="ddim8")
    noises = _noises(8)
    plain = _loop(d, _model(d), Sampler(kind), noises=noises)
    off = _loop(d, _model(d), Sampler(kind, corrections=Corrections(1.0, 0.0, 0.0, 0.0)), noises=noises)
    assert torch.equal(plain, off)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_eps_scaling_equals_a_model_with_scaled_eps(kind):
    """ES with (b, k) == the plain loop with a network whose eps is divided by k * i + b at step i."""
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, timestep_respacing="ddim6")
    model = _model(d)
    b, k = 1.05, 0.01
    tmap = d.timestep_map

    def scaled(x, t, **kw):
        out = model(x, t)
        i = tmap.index(int(t[0]))
        return torch.cat([out[:, :3] / (k * i + b), out[:, 3:]], dim=1)

    noises = _noises(6)
    ours = _loop(d, model, Sampler(kind, corrections=Corrections(eps_scale=b, eps_scale_k=k)), noises=noises)
    ref = _loop(d, scaled, Sampler(kind), noises=noises)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)
    assert not torch.allclose(ours, _loop(d, model, Sampler(kind), noises=noises), atol=1e-3)


def test_order_es_then_data_shift_then_update_then_dcw():
    """ES, TS (adm-data, after the network), DDIM update, DCW, written out step by step by hand."""
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, timestep_respacing="ddim10")
    model = _model(d)
    corr = Corrections(eps_scale=1.02, dcw_low=0.05, dcw_high=-0.02)
    ts = TimeShift(60, 300, "adm-data")
    ours = _loop(d, model, Sampler("ddim", time_shift=ts, corrections=corr))
    x = torch.ones(SHAPE) * 0.9
    base = torch.from_numpy(d.base_alphas_cumprod)
    S = d.num_timesteps
    for step, i in enumerate(range(S - 1, -1, -1)):
        t = torch.full((SHAPE[0],), i)
        cur, nxt = d.timestep_map[i], (d.timestep_map[i - 1] if i else -1)
        net = lambda x_, t_, **kw: torch.cat([model(x_, t_)[:, :3] / 1.02, model(x_, t_)[:, 3:]], 1)  # noqa
        pred = d.model_predictions(net, x, t)
        target = None
        if step > 0 and cur > 300:
            target = shift_target(x, base, ts=ts, cur=cur, nxt=nxt, num_steps=S,
                                  x0_hat=pred["pred_xstart"]).target_alphas_cumprod
        out = d.ddim_step(net, x, t, target_alphas_cumprod=target, pred=pred, is_last=i == 0)
        x = dcw_correct(out["sample"], pred["pred_xstart"], 0.05, -0.02, alpha_bar_t=d.alphas_cumprod[i])
    assert torch.allclose(ours, x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["dpm++2m", "ipndm"])
def test_solver_in_the_loop_equals_the_solver_by_hand(kind):
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, timestep_respacing="ddim8")
    model = _model(d)
    ours = _loop(d, model, Sampler(kind))
    solver, state, x = get_solver(kind), None, torch.ones(SHAPE) * 0.9
    state = solver.init_state()
    for i in range(d.num_timesteps - 1, -1, -1):
        t = torch.full((SHAPE[0],), i)
        x0 = d.model_predictions(model, x, t)["pred_xstart"]
        a, a_next = torch.tensor(d.alphas_cumprod[i]), torch.tensor(d.alphas_cumprod_prev[i])
        x, state = solver.step(state, x, eps_from_x0(x, x0, a), x0, a, a_next, is_last=i == 0,
                               num_steps=d.num_timesteps)
    assert torch.equal(ours, x)
    assert not torch.allclose(ours, _loop(d, model, Sampler("ddim")), atol=1e-4)


@pytest.mark.parametrize("kind", ["ddim", "dpm++2m", "ipndm", "s-pndm", "f-pndm"])
def test_solver_time_shift_off_is_bit_identical(kind):
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, timestep_respacing="ddim8")
    plain = _loop(d, _model(d), Sampler(kind))
    for ts in (TimeShift(0, 0), TimeShift(40, 5000)):
        assert torch.equal(_loop(d, _model(d), Sampler(kind, time_shift=ts)), plain)
    shifted = _loop(d, _model(d), Sampler(kind, time_shift=TimeShift(40, 100)))
    assert torch.isfinite(shifted).all() and not torch.equal(shifted, plain)


@pytest.mark.parametrize("kind", ["ddim", "dpm++2m", "s-pndm", "f-pndm"])
def test_network_calls_equal_nfe(kind):
    d = create_gaussian_diffusion(noise_schedule="cosine", learn_sigma=True, timestep_respacing="ddim8")
    model, calls = _model(d), [0]

    def counted(x, t, **kw):
        calls[0] += 1
        return model(x, t)

    steps = list(sample_loop_progressive(d, counted, SHAPE, Sampler(kind), noise=torch.ones(SHAPE) * 0.9))
    expected = 8 if kind == "ddim" else nfe(kind, 8, ends_clean=True)
    assert calls[0] == expected == sum(s["nfe"] for s in steps)
