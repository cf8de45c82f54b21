"""Shared fixtures and the suite's markers.

Markers: ``integration`` (runs scripts in subprocesses or under mpiexec; ``-m "not integration"``
leaves the fast in-process suite) and ``slow`` (long; run only when ``-m`` names it, e.g.
``-m slow``). The plain ``python -m pytest`` runs everything except ``slow``.
"""

import pytest
import torch

from reference_models import AnalyticEpsModel


def pytest_collection_modifyitems(config, items):
    if "slow" in (config.getoption("-m") or ""):
        return
    keep, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("slow") else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture
def analytic_model():
    """Factory: ``analytic_model(diffusion, shape=(C, H, W), delta=0.1, learn_sigma=True)``.

    Gaussian data x0 ~ N(mu, 0.5^2) per pixel (mu fixed by torch seed 0) and the exact
    posterior-mean noise scaled by (1 + delta), at the ORIGINAL timestep the model receives.
    """

    def make(diffusion, shape=(3, 8, 8), delta=0.1, learn_sigma=True, s=0.5):
        gen = torch.Generator().manual_seed(0)
        mu = 0.3 * torch.randn((1,) + tuple(shape), generator=gen)
        return AnalyticEpsModel(mu, s, delta, diffusion.base_alphas_cumprod, learn_sigma=learn_sigma)

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random UNet checkpoint and its flags: (path, flags dict, argv list)."""
    from guided_diffusion.script_util import create_model_and_diffusion

    flags = dict(image_size=8, num_channels=16, num_res_blocks=1, attention_resolutions="", channel_mult="1")
    torch.manual_seed(0)
    model, _ = create_model_and_diffusion(**flags)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    torch.save(model.state_dict(), path)
    argv = ["--model_path", str(path)]
    for k, v in flags.items():
        argv += [f"--{k}", str(v)]
    return str(path), flags, argv
