"""Every sampler on every grid family and both schedules stays a sane diffusion state.

The model is analytic: data x0 ~ N(mu, s^2) per pixel (s = 0.25, |mu| <= 0.3, so the data lie in
[-1, 1] but for about 0.3% of the pixels) and its exact eps, optionally with a deliberate error at
high t as a real network has there. Grids: ddimN (starts at 900), pndmN (801 .. 1), quadN (800 .. 0),
section counts "N" and "a,b,c" (start at T - 1 = 999, where the cosine alpha_bar is 2.4e-9).
"""

import pytest
import torch

from guided_diffusion.errors import ExplodedSampleError, NonFiniteSampleError
from guided_diffusion.sampler.generate import EXPLODED_SHARE, exploded_share, sample_batch
from guided_diffusion.sampler.loop import Sampler, sample_loop_progressive
from guided_diffusion.sampler.solvers import SOLVER_NAMES
from guided_diffusion.sampler.solvers import SOLVERS
from guided_diffusion.script_util import create_gaussian_diffusion
from reference_models import AnalyticEpsModel

SHAPE = (16, 1, 8, 8)
GRIDS = ("ddim10", "pndm10", "quad10", "10", "5", "4,3,3")
TOP_GRIDS = ("10", "5", "4,3,3")  # section counts: the first timestep is T - 1
SCHEDULES = ("cosine", "linear")
DATA_STD = 0.25


class TopErrorEpsModel(AnalyticEpsModel):
    """The exact eps of N(mu, s^2) data plus ``top_error`` * a fixed pattern at t >= 900 (original t),
    on the first ``error_share`` of the pixels (the others exact; every pixel is its own problem).

    x (B, C, H, W), t (B,) original (possibly fractional) timesteps -> eps (B, C, H, W).
    """

    def __init__(self, mu, s, base_alphas_cumprod, top_error, error_share=1.0):
        super().__init__(mu, s, 0.0, base_alphas_cumprod, learn_sigma=False)
        self.top_error = float(top_error)
        n = mu.numel()
        index = torch.arange(n, dtype=torch.float32)
        self.pattern = (torch.sin(index) * (index < error_share * n)).reshape(mu.shape)

    def forward(self, x, t, **kwargs):
        eps = super().forward(x, t)
        high = (torch.as_tensor(t) >= 900).to(x.dtype).reshape(-1, 1, 1, 1)
        return eps + self.top_error * high * self.pattern


def _setup(schedule, grid, top_error=0.0, error_share=1.0):
    # sigma_small: DDPM with the posterior variance (the large fixed variance beta_t is very noisy on
    # few-step grids by design, not by a solver's fault)
    d = create_gaussian_diffusion(noise_schedule=schedule, timestep_respacing=grid, sigma_small=True)
    gen = torch.Generator().manual_seed(0)
    mu = 0.3 * (2 * torch.rand(SHAPE[1:], generator=gen) - 1)
    model = TopErrorEpsModel(mu, DATA_STD, d.base_alphas_cumprod, top_error, error_share)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    return d, model, mu, x_T


def _run(d, model, x_T, kind, clip_denoised=True):
    """The states after every step, with the alpha_bar each was moved to (float or (B,))."""
    gen = torch.Generator().manual_seed(2)
    states = []
    for out in sample_loop_progressive(d, model, x_T.shape, Sampler(kind=kind, clip_denoised=clip_denoised),
                                       noise=x_T, noise_fn=lambda step, like: torch.randn(like.shape, generator=gen)):
        target = out["target_alphas_cumprod"]
        states.append((out["sample"], float(d.alphas_cumprod_prev[out["t"]]) if target is None else target))
    return states


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("top_error", [0.0, 0.05])
def test_every_sampler_stays_a_diffusion_state(schedule, grid, top_error):
    """No state leaves the reach of the data: |x| <= 2 sqrt(a') + 6 sqrt(1 - a') at every step (the
    data here are within +-1.3 and the noise within 6 sd for these 1,024 pixels), and the output
    is not saturated: at most 5% of the pixels at |x| >= 1 (the data have 0.3%; the unclipped PNDM
    transfer gave 50-100% on the top-starting cosine grids)."""
    d, model, _, x_T = _setup(schedule, grid, top_error)
    for kind in SOLVER_NAMES:
        states = _run(d, model, x_T, kind)
        for k, (x, a) in enumerate(states):
            a = torch.as_tensor(a, dtype=torch.float64)
            bound = float((2 * a.sqrt() + 6 * (1 - a).sqrt()).max())
            assert torch.isfinite(x).all() and x.abs().max() <= bound, (kind, grid, schedule, k, x.abs().max())
        final = states[-1][0]
        saturated = float((final.abs() >= 1).float().mean())
        assert saturated <= 0.05, (kind, grid, schedule, saturated)


def _exact_clean(x_T, a_T, mu):
    """The probability-flow ODE's map of x_T (at alpha_bar a_T) to clean for N(mu, s^2) data:
    x0 = mu + s (x_T - sqrt(a_T) mu) / sqrt(a_T s^2 + 1 - a_T)."""
    return mu + DATA_STD * (x_T - a_T ** 0.5 * mu) / (a_T * DATA_STD ** 2 + 1 - a_T) ** 0.5


# DPM-Solver++(2M) is 1.3-1.35 x DDIM on the cosine top grids with this data, with the clip and without it
# alike (measured: "10" 0.089 vs 0.067, "4,3,3" 0.088 vs 0.068); a property of its x0 extrapolation on
# these grids, not of the transfer. Its bound is 1.5 there; every other case uses 1.1.
LOOSER = {("dpm++2m", "cosine"): 1.5}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("grid", TOP_GRIDS)
def test_no_solver_is_worse_than_ddim_on_a_top_starting_grid(schedule, grid):
    """Exact eps, Gaussian data: each solver's RMS error against the exact PF-ODE solution is at
    most 1.1 x DDIM's (1.5 x for DPM-Solver++(2M) on cosine, see LOOSER). Why 1.1: on these few-step
    grids the first step (from alpha_bar 2.4e-9 on cosine) carries most of DDIM's error, and a
    solver that takes it through the clipped x0 as DDIM does is at DDIM's level or better (measured
    0.14-0.6 x for iPNDM, S-PNDM, F-PNDM); 10% leaves room for the coarse multistep extrapolation,
    while the unclipped PNDM transfer was 6x (S-PNDM) to 1e6x (F-PNDM) worse here."""
    d, model, mu, x_T = _setup(schedule, grid)
    a_T = float(d.alphas_cumprod[-1])
    exact = _exact_clean(x_T.double(), a_T, mu.double())
    errors = {}
    for kind in SOLVERS:
        final = _run(d, model, x_T, kind)[-1][0].double()
        errors[kind] = float((final - exact).pow(2).mean().sqrt())
    for kind in SOLVERS:
        assert errors[kind] <= LOOSER.get((kind, schedule), 1.1) * errors["ddim"], (grid, schedule, errors)


# ----------------------------------------------------------------------------- the exploded-state guard
def test_exploded_share_separates_noise_from_an_exploded_state():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn((4, 3, 16, 16), generator=g, dtype=torch.float64)
    assert exploded_share(noise, 0.0).max() == 0  # pure noise: |eps| > 5 for none of 3,072 pixels
    data = torch.rand((4, 3, 16, 16), generator=g, dtype=torch.float64) * 2 - 1
    a = torch.tensor([0.03, 0.5, 0.97, 1.0], dtype=torch.float64)
    state = a.sqrt().reshape(-1, 1, 1, 1) * data + (1 - a).sqrt().reshape(-1, 1, 1, 1) * noise
    assert exploded_share(state, a).max() == 0
    # x0 of 3 at alpha_bar 1 (clean) is beyond 2; at 0.5 it is not enough to leave 2 sqrt(a) + 5 sqrt(1 - a)
    assert exploded_share(torch.full((1, 1, 2, 2), 3.0), 1.0).tolist() == [1.0]
    assert exploded_share(torch.full((1, 1, 2, 2), 3.0), 0.5).tolist() == [0.0]
    half = torch.cat([torch.full((1, 1, 2, 2), 100.0), torch.zeros((1, 1, 2, 2))], dim=3)
    assert exploded_share(half, 0.5).tolist() == [0.5]  # the share of the sample's pixels


def _guard_case(kind, clip_denoised, top_error, error_share=1.0):
    d, model, _, _ = _setup("cosine", "10", top_error, error_share)
    return dict(model=model, diffusion=d, indices=torch.arange(4), shape=SHAPE[1:], seed=3,
                sampler=Sampler(kind=kind, clip_denoised=clip_denoised))


def test_exploded_run_is_a_one_line_error_naming_solver_and_grid():
    """A network error of 0.5 at t >= 900 with no clipping: the first step from alpha_bar 2.4e-9
    multiplies it by sqrt(a'/a) ~ 3.5e3 and the state explodes (the output would be saturated)."""
    with pytest.raises(ExplodedSampleError) as info:
        sample_batch(**_guard_case("s-pndm", False, 0.5))
    text = str(info.value)
    assert isinstance(info.value, NonFiniteSampleError) and "\n" not in text
    assert "S-PNDM" in text and "timesteps 999, 888, 777, ..., 0 (10 steps)" in text and "seed=3" in text
    assert "--clip_denoised True" in text and "after the step from t = 999" in text
    # the same model and grid with the clip: every state stays in reach, nothing is raised
    x, _ = sample_batch(**_guard_case("s-pndm", True, 0.5))
    assert x.abs().max() <= 1


@pytest.mark.parametrize("error_share, fires", [(0.25, False), (0.75, True)])
def test_guard_fires_when_most_pixels_exploded(error_share, fires):
    """Unclipped DDIM with the error on a quarter of the pixels: those explode, the run is still
    allowed (the guard wants most pixels); on three quarters it is stopped."""
    case = _guard_case("ddim", False, 0.5, error_share)
    worst = max(float(exploded_share(x, a).max())
                for x, a in _run(case["diffusion"], case["model"], torch.randn(SHAPE), "ddim", False))
    assert (worst > EXPLODED_SHARE) == fires and worst > 0.2, worst
    if fires:
        with pytest.raises(ExplodedSampleError, match="DDIM"):
            sample_batch(**case)
    else:
        x, _ = sample_batch(**case)
        assert x.abs().max() > 2  # exploded pixels there are, only not most of them
