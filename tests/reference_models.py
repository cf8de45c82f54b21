"""Test helpers: the analytic model of shared/reference/sampler_cosine.pt, and reference loading."""

import os

import pytest
import torch

REFERENCE_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference")


def load_reference(name):
    """Load ``../shared/reference/<name>`` (relative to the repo root), or skip with a reason."""
    path = os.path.normpath(os.path.join(REFERENCE_DIR, name))
    if not os.path.exists(path):
        pytest.skip(f"reference vectors not found at {path} (../shared/reference is absent)")
    return torch.load(path, weights_only=True)


class AnalyticEpsModel(torch.nn.Module):
    """x0 ~ N(mu, s^2 I) per pixel; returns (1 + delta) * the exact posterior-mean noise.

    ab is the base schedule's alpha_bar at the ORIGINAL timestep the model receives.
    Output has 2C channels (eps, zeros) for learn_sigma models unless ``learn_sigma=False``.
    """

    def __init__(self, mu, s, delta, base_alphas_cumprod, learn_sigma=True):
        super().__init__()
        self.mu = mu.float()
        self.s = float(s)
        self.delta = float(delta)
        self.ab = torch.as_tensor(base_alphas_cumprod, dtype=torch.float32)
        self.learn_sigma = learn_sigma

    def forward(self, x, t, **kwargs):
        ab = self.ab[t.long()].reshape(-1, 1, 1, 1)
        eps = (1 + self.delta) * torch.sqrt(1 - ab) * (x - torch.sqrt(ab) * self.mu) / (
            ab * self.s**2 + 1 - ab
        )
        if self.learn_sigma:
            return torch.cat([eps, torch.zeros_like(eps)], dim=1)
        return eps
