"""Shared fixtures and the suite's markers.

Markers: ``integration`` (runs scripts in subprocesses or under mpiexec; set by hand or, below,
found from the test's source; ``-m "not integration"`` leaves the fast in-process suite) and ``slow`` (long; run only when ``-m`` names it, e.g.
``-m slow``). The plain ``python -m pytest`` runs everything except ``slow``.
"""

import inspect
import re
import sys

import pytest
import torch

from reference_models import AnalyticEpsModel

_LAUNCHES = re.compile(r"\bsubprocess\.|\bmpiexec\b|\bPopen\(")
_NAME = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\b")


def _launches_process(obj, module, seen):
    """Whether ``obj``'s source, or a module-level function/fixture it names (in its own module or
    the shared ``helpers``), starts a process."""
    if obj in seen or not callable(obj):
        return False
    seen.add(obj)
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        return False
    if _LAUNCHES.search(source):
        return True
    for name in set(_NAME.findall(source)):
        other = getattr(module, name, None)
        if inspect.isfunction(other) and other.__module__ in (module.__name__, "helpers") and _launches_process(
                other, sys.modules[other.__module__], seen):
            return True
    return False


def pytest_collection_modifyitems(config, items):
    """Mark tests that start processes (directly, through a helper or a fixture of their module)
    ``integration``; drop ``slow`` tests unless ``-m`` names them."""
    for item in items:
        fn, module = getattr(item, "function", None), getattr(item, "module", None)
        if fn is None or module is None or item.get_closest_marker("integration"):
            continue
        seen = set()
        fixtures = [getattr(module, name, None) for name in getattr(item, "fixturenames", ())]
        if _launches_process(fn, module, seen) or any(
                f is not None and _launches_process(getattr(f, "__wrapped__", f), module, seen) for f in fixtures):
            item.add_marker(pytest.mark.integration)
    if "slow" in (config.getoption("-m") or ""):
        return
    keep, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("slow") else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module's in-process runs (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    the machine is shared, and oversubscription is very slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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

    flags = dict(image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="", channel_mult="1")
    torch.manual_seed(0)
    model, _ = create_model_and_diffusion(**flags)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    torch.save(model.state_dict(), path)
    argv = ["--model_path", str(path)]
    for k, v in flags.items():
        argv += [f"--{k}", str(v)]
    return str(path), flags, argv
