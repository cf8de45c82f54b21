"""Timestep samplers for training (upstream ``resample`` API, with explicit generators and state).

A sampler has ``weights()`` (unnormalised, (T,) float64 numpy) and
``sample(batch_size, device, generator=None) -> (timesteps, weights)``: timesteps drawn from
p = w / sum(w) and importance weights 1 / (T * p[t]) that keep the loss unbiased. ``generator``
is a CPU ``torch.Generator``; draws happen on the CPU and are moved to ``device`` so results do
not depend on the device.

Loss-aware samplers (``LossSecondMomentResampler``) learn from the per-sample losses:
``update_with_local_losses(local_ts, local_losses, gather_fn=None)`` concatenates every rank's
values in rank order (``gather_fn``: this rank's object -> list of every rank's, e.g.
``dist_util.all_gather_object``) and calls ``update_with_all_losses``, so all ranks keep the
same state. ``state_dict()`` / ``load_state_dict()`` carry that state across a resume.
"""

from abc import ABC, abstractmethod

import numpy as np
import torch

__all__ = [
    "ScheduleSampler",
    "UniformSampler",
    "LossAwareSampler",
    "LossSecondMomentResampler",
    "create_named_schedule_sampler",
    "SCHEDULE_SAMPLERS",
]

SCHEDULE_SAMPLERS = ("uniform", "loss-second-moment")


def create_named_schedule_sampler(name, diffusion):
    """``"uniform"`` or ``"loss-second-moment"`` for ``diffusion`` (its ``num_timesteps``)."""
    if name == "uniform":
        return UniformSampler(diffusion)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion)
    raise NotImplementedError(f"unknown schedule sampler {name!r}: use one of {', '.join(SCHEDULE_SAMPLERS)}")


class ScheduleSampler(ABC):
    """A distribution over the diffusion's timesteps, used to pick t for each training sample."""

    @abstractmethod
    def weights(self):
        """(T,) float64 numpy array of non-negative, unnormalised probabilities."""

    def sample(self, batch_size, device, generator=None):
        """Timesteps (LongTensor (B,)) and importance weights (FloatTensor (B,)) on ``device``."""
        w = torch.as_tensor(np.asarray(self.weights(), dtype=np.float64))
        p = w / w.sum()
        indices = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = (1.0 / (len(p) * p[indices])).float()
        return indices.to(device), weights.to(device)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")


class UniformSampler(ScheduleSampler):
    """p(t) = 1 / T; importance weights are all 1."""

    def __init__(self, diffusion):
        self.diffusion = diffusion
        self._weights = np.ones([diffusion.num_timesteps], dtype=np.float64)

    def weights(self):
        return self._weights

    def sample(self, batch_size, device, generator=None):
        t = torch.randint(0, len(self._weights), (batch_size,), generator=generator)
        return t.to(device), torch.ones(batch_size, device=device)


class LossAwareSampler(ScheduleSampler):
    def update_with_local_losses(self, local_ts, local_losses, gather_fn=None):
        """Update from this rank's (timestep, loss) pairs and every other rank's (rank order).

        :param local_ts: (B,) int tensor; :param local_losses: (B,) float tensor.
        :param gather_fn: this rank's object -> list of all ranks' objects (None: one process).
        """
        mine = (
            [int(t) for t in local_ts.detach().cpu().tolist()],
            [float(x) for x in local_losses.detach().float().cpu().tolist()],
        )
        parts = gather_fn(mine) if gather_fn is not None else [mine]
        timesteps = [t for ts, _ in parts for t in ts]
        losses = [x for _, ls in parts for x in ls]
        self.update_with_all_losses(timesteps, losses)

    @abstractmethod
    def update_with_all_losses(self, ts, losses):
        """Update from every rank's timesteps and losses (identical on every rank)."""


class LossSecondMomentResampler(LossAwareSampler):
    """p(t) proportional to sqrt(E[L_t^2]) over the last ``history_per_term`` losses at t, mixed
    with ``uniform_prob`` of the uniform distribution; uniform until every t has a full history
    (improved DDPM, section 3.3)."""

    def __init__(self, diffusion, history_per_term=10, uniform_prob=0.001):
        self.diffusion = diffusion
        self.history_per_term = int(history_per_term)
        self.uniform_prob = float(uniform_prob)
        T = diffusion.num_timesteps
        self._loss_history = np.zeros([T, self.history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([T], dtype=np.int64)

    def weights(self):
        T = self.diffusion.num_timesteps
        if not self._warmed_up():
            return np.ones([T], dtype=np.float64)
        weights = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        weights /= np.sum(weights)
        weights *= 1 - self.uniform_prob
        weights += self.uniform_prob / T
        return weights

    def update_with_all_losses(self, ts, losses):
        for t, loss in zip(ts, losses):
            if self._loss_counts[t] == self.history_per_term:
                self._loss_history[t, :-1] = self._loss_history[t, 1:]  # drop the oldest
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1

    def _warmed_up(self):
        return bool((self._loss_counts == self.history_per_term).all())

    def state_dict(self):
        return {
            "loss_history": torch.from_numpy(self._loss_history.copy()),
            "loss_counts": torch.from_numpy(self._loss_counts.copy()),
        }

    def load_state_dict(self, state):
        history = state["loss_history"].detach().cpu().numpy().astype(np.float64)
        counts = state["loss_counts"].detach().cpu().numpy().astype(np.int64)
        if history.shape != self._loss_history.shape or counts.shape != self._loss_counts.shape:
            raise ValueError(
                f"schedule sampler state has history {tuple(history.shape)}, expected "
                f"{self._loss_history.shape} (diffusion_steps / timestep_respacing differ?)"
            )
        self._loss_history = history.copy()
        self._loss_counts = counts.copy()
