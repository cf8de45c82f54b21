"""Test helpers: the upstream reference vectors (kept in tests/data) and the analytic model they use.

tests/data/{sampler_cosine,diffusion_hybrid,unet_cifar_small}.pt are reference vectors produced by
running the original TS-DPM-ADM implementation (tests/data/REFERENCE_README.md says how); the
repository tests itself with nothing beside it.
"""

import os

import torch

REFERENCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
REFERENCE_FILES = ("sampler_cosine.pt", "diffusion_hybrid.pt", "unet_cifar_small.pt")


def load_reference(name):
    """Load ``tests/data/<name>``, one of :data:`REFERENCE_FILES` (a missing file is an error, not a skip)."""
    return torch.load(os.path.join(REFERENCE_DIR, name), weights_only=True)


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
