"""Schedules, respacing, diffusion math, and the shared upstream reference vectors."""

import math

import numpy as np
import pytest
import torch

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.respace import SpacedDiffusion
from guided_diffusion.respace import space_timesteps
from guided_diffusion.schedules import get_named_beta_schedule
from guided_diffusion.script_util import create_gaussian_diffusion, create_model_and_diffusion
from reference_models import AnalyticEpsModel, load_reference


def test_linear_schedule_values():
    betas = get_named_beta_schedule("linear", 1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.allclose(get_named_beta_schedule("linear", 500), np.linspace(2e-4, 0.04, 500))


def test_cosine_schedule_values():
    betas = get_named_beta_schedule("cosine", 1000)
    ab = np.cumprod(1 - betas)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert ab[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert betas.max() <= 0.999
    # the rule-adm table: flipped alpha_bar vs 1 - alpha_bar, cosine (docs/method.md)
    assert ab[999 - 300] == pytest.approx(0.2031, abs=1e-4)
    assert 1 - ab[300] == pytest.approx(0.2144, abs=1e-4)


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="noise_schedule"):
        get_named_beta_schedule("linaer", 1000)


@pytest.mark.parametrize("spec, expected", [
    ("ddim5", [0, 200, 400, 600, 800]),
    ("ddim10", list(range(0, 1000, 100))),
    ("ddim50", list(range(0, 1000, 20))),
    ("5", [0, 250, 500, 749, 999]),
    ("10", [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]),
])
def test_space_timesteps(spec, expected):
    assert sorted(space_timesteps(1000, spec)) == expected


def test_space_timesteps_sections():
    # guided-diffusion docstring example: 300 steps, sections 10, 15, 20
    steps = sorted(space_timesteps(300, [10, 15, 20]))
    assert len(steps) == 45 and steps[0] == 0 and steps[9] == 99 and steps[10] == 100 and steps[-1] == 299
    assert len(space_timesteps(1000, "10,20,30")) == 60


@pytest.mark.parametrize("spec, match", [
    ("ddim7x", "ddimN"), ("ddim0", ">= 1"), ("ddim333", "no integer stride"),
    ("2000", "cannot take 2000"), ("abc", "expected"), ("10,0", "cannot take 0"),
])
def test_space_timesteps_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(1000, spec)


def test_respaced_alphas_cumprod_equal_base_at_kept_steps():
    d = create_gaussian_diffusion(noise_schedule="cosine", timestep_respacing="ddim10")
    assert d.timestep_map == list(range(0, 1000, 100))
    assert np.allclose(d.alphas_cumprod, d.base_alphas_cumprod[d.timestep_map], rtol=1e-12)
    assert len(d.base_alphas_cumprod) == 1000 and d.num_timesteps == 10


def test_q_sample_moments_and_xstart_eps_roundtrip():
    d = create_gaussian_diffusion(noise_schedule="linear")
    torch.manual_seed(0)
    x0 = torch.full((4000, 1, 1, 1), 0.5)
    t = torch.full((4000,), 500, dtype=torch.long)
    xt = d.q_sample(x0, t)
    ab = d.alphas_cumprod[500]
    assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.5, abs=0.03)
    assert xt.var().item() == pytest.approx(1 - ab, rel=0.08)
    x = torch.randn(3, 3, 4, 4)
    eps = torch.randn_like(x)
    tt = torch.tensor([1, 400, 999])
    x0_hat = d._predict_xstart_from_eps(x, tt, eps)
    assert torch.allclose(d._predict_eps_from_xstart(x, tt, x0_hat), eps, atol=1e-4)


def test_posterior_matches_closed_form():
    d = create_gaussian_diffusion(noise_schedule="cosine")
    t = 300
    ab, abp, beta = d.alphas_cumprod[t], d.alphas_cumprod[t - 1], d.betas[t]
    assert d.posterior_variance[t] == pytest.approx(beta * (1 - abp) / (1 - ab))
    assert d.posterior_mean_coef1[t] == pytest.approx(math.sqrt(abp) * beta / (1 - ab))
    assert d.posterior_mean_coef2[t] == pytest.approx(math.sqrt(1 - beta) * (1 - abp) / (1 - ab))


def test_reference_sampler_runs():
    """Every run in tests/data/sampler_cosine.pt (upstream DDIM and TS-DDIM) to <= 1e-5."""
    ref = load_reference("sampler_cosine.pt")
    assert len(ref["runs"]) == 8
    for run in ref["runs"]:
        kwargs = dict(ref["kwargs"], timestep_respacing=run["respacing"], do_time_shift=run["do_time_shift"],
                      cutoff=run["cutoff"], window=run["window"])
        _, diffusion = create_model_and_diffusion(**kwargs)
        model = AnalyticEpsModel(ref["model"]["mu"], ref["model"]["s"], ref["model"]["delta"],
                                 diffusion.base_alphas_cumprod)
        sample = diffusion.ddim_sample_loop(model, (4, 3, 8, 8), noise=ref["noise"].clone(), clip_denoised=True)
        err = (sample - run["sample"]).abs().max().item()
        assert err <= 1e-5, (run["respacing"], run["do_time_shift"], run["cutoff"], run["window"], err)


def test_reference_shift_changes_samples():
    """Sanity for the test above: the TS runs differ from their plain twins by far more than 1e-5."""
    ref = load_reference("sampler_cosine.pt")
    runs = {(r["respacing"], r["do_time_shift"], r["cutoff"], r["window"]): r["sample"] for r in ref["runs"]}
    assert (runs[("ddim10", True, 300, 80)] - runs[("ddim10", False, 300, 80)]).abs().max() > 1e-2


def test_reference_p_mean_variance_and_training_losses():
    ref = load_reference("diffusion_hybrid.pt")
    model, diffusion = create_model_and_diffusion(**ref["kwargs"])
    model.load_state_dict(ref["state_dict"], strict=True)
    model.eval()
    with torch.no_grad():
        out = diffusion.p_mean_variance(model, ref["x_t"], ref["t"], clip_denoised=True)
        # pred_xstart = (x_t - sqrt(1 - a) eps) / sqrt(a) carries the network's float32 rounding, which
        # differs between CPU kernels (AVX2 / AVX-512), times up to sqrt(1/a - 1) = 1.9 (t = 684):
        # 1.26e-5 measured on an AMD EPYC, under 1e-5 on the machine that made the vectors; a wrong
        # formula is off by 1e-3 or more.
        for key, tol in (("mean", 1e-5), ("variance", 1e-5), ("log_variance", 1e-5), ("pred_xstart", 5e-5)):
            expected = ref["p_mean_variance"][key]
            rel = ((out[key] - expected).abs().max() / expected.abs().max()).item()
            assert rel <= tol, (key, rel)
        losses = diffusion.training_losses(model, ref["x_start"], ref["t"], noise=ref["noise"])
    for key in ("loss", "mse", "vb"):
        expected = ref["training_losses"][key]
        assert torch.allclose(losses[key], expected, rtol=1e-5, atol=1e-7), key


@pytest.mark.parametrize("use_kl, predict_xstart, rescale", [(True, False, False), (False, True, False),
                                                              (False, False, True)])
def test_other_loss_types_run(use_kl, predict_xstart, rescale):
    torch.manual_seed(0)
    model, diffusion = create_model_and_diffusion(
        image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="", channel_mult="1",
        learn_sigma=True, use_kl=use_kl, predict_xstart=predict_xstart, rescale_learned_sigmas=rescale,
        diffusion_steps=50, input_pertub=0.1)
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    losses = diffusion.training_losses(model, x0, torch.tensor([0, 30]))
    assert losses["loss"].shape == (2,) and torch.isfinite(losses["loss"]).all()
    losses["loss"].mean().backward()


def test_input_perturbation_changes_only_the_input():
    model, diffusion = create_model_and_diffusion(
        image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="", channel_mult="1",
        diffusion_steps=100, input_pertub=0.2, perturb_schedule_type="linaer")
    x0, noise, xi = torch.zeros(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    t = torch.tensor([10, 90])
    seen = {}

    def spy(x, ts, **kw):
        seen["x"] = x
        return torch.zeros_like(x)

    losses = diffusion.training_losses(spy, x0, t, noise=noise, perturb_noise=xi)
    gamma = np.linspace(0.002, 0.2, 100)[[10, 90]]
    expected_in = diffusion.q_sample(x0, t, noise=noise + torch.tensor(gamma, dtype=torch.float32).view(2, 1, 1, 1) * xi)
    assert torch.allclose(seen["x"], expected_in)
    assert torch.allclose(losses["mse"], noise.square().mean(dim=(1, 2, 3)))  # target stays the noise


def test_bits_per_dim_loop():
    torch.manual_seed(0)
    model, diffusion = create_model_and_diffusion(
        image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="", channel_mult="1",
        learn_sigma=True, diffusion_steps=10, noise_schedule="cosine")
    out = diffusion.calc_bpd_loop(model, torch.rand(2, 3, 8, 8) * 2 - 1)
    assert out["vb"].shape == (2, 10) and out["total_bpd"].shape == (2,)
    assert torch.allclose(out["total_bpd"], out["vb"].sum(1) + out["prior_bpd"])
    assert (out["total_bpd"] > 0).all()


def test_spaced_diffusion_rejects_bad_timesteps():
    betas = get_named_beta_schedule("linear", 100)
    with pytest.raises(ValueError):
        SpacedDiffusion(use_timesteps=[150], betas=betas, model_mean_type=gd.ModelMeanType.EPSILON,
                        model_var_type=gd.ModelVarType.FIXED_SMALL, loss_type=gd.LossType.MSE)
