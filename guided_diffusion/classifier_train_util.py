"""Training loop of the noisy-image classifier (upstream ``scripts/classifier_train.py`` semantics).

:class:`ClassifierTrainLoop` is :class:`~guided_diffusion.train_util.TrainLoop` (exact resume,
data parallel, atomic ``model{step:06d}.pt`` / ``opt{step:06d}.pt``, SIGTERM handling, no EMA)
with upstream's classifier objective:

* inputs: with ``noised`` (default) x_t = q_sample(x_0, t) at timesteps t from the schedule
  sampler (importance weights ignored, as upstream), else the clean images with t = 0. The
  classifier gets the ORIGINAL timestep (and the rescaling), as the sampling loop's ``cond_fn``
  does; without respacing that is upstream's t;
* loss: cross-entropy, mean over the batch (microbatches weighted by their share of it);
* logs: ``train_loss``, ``train_acc@1``, ``train_acc@5``, each also by timestep quarter
  (``_q0`` .. ``_q3``); with held-out data, every ``eval_interval`` steps one batch of it the
  same way under ``val_``;
* lr: constant, or with ``anneal_lr`` ``lr * (1 - step / iterations)``; training stops at
  ``iterations`` (or ``max_steps``).

Randomness is derived from (seed, step[, rank]) as in TrainLoop: data order and flips, timesteps,
noise; the held-out batch of step s is batch s // eval_interval of its own stream, with its own
timesteps and noise.
"""

import contextlib

import torch
import torch.nn.functional as F

from . import logger
from .io_util import derive_seed
from .train_util import TrainLoop, log_loss_dict


def top_k_correct(logits, labels, k):
    """(B,) float: 1 where the label is among the k largest logits (k capped at the class count)."""
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    return (top == labels[:, None]).any(dim=-1).float()


class ClassifierTrainLoop(TrainLoop):
    """TrainLoop with the classifier objective (see the module docstring).

    :param noised: train on x_t at random t (True) or on clean images at t = 0.
    :param iterations: total steps; :param anneal_lr: linear decay of the lr to 0 over them.
    :param val_data: optional StepBatcher of held-out labelled images; :param eval_interval: steps
        between held-out batches.
    Other keywords as TrainLoop (``ema_rate`` is empty: the classifier keeps no EMA).
    """

    def __init__(self, *, noised=True, iterations=0, anneal_lr=False, val_data=None, eval_interval=5, **kwargs):
        self.noised = bool(noised)
        self.iterations = int(iterations)
        self.anneal_lr = bool(anneal_lr)
        self.val_data = val_data
        self.eval_interval = max(int(eval_interval), 1)
        super().__init__(ema_rate="", ema_warmup=False, lr_anneal_steps=0, **kwargs)

    def _done(self):
        if self.iterations and self.step >= self.iterations:
            return True
        return bool(self.max_steps) and self.step >= self.max_steps

    def current_lr(self, step=None):
        step = self.step if step is None else step
        if not (self.anneal_lr and self.iterations):
            return self.lr
        return self.lr * (1.0 - step / self.iterations)

    def _inputs(self, batch, t, noise):
        """(x_t, t) the classifier sees: noised at t, or clean at t = 0."""
        if not self.noised:
            return batch, torch.zeros_like(t)
        return self.diffusion.q_sample(batch, t, noise=noise), t

    def _classify(self, model, x, t, labels, prefix, backward):
        """Cross-entropy of ``model`` on (x, t, labels) by microbatch; logs; gradients if ``backward``."""
        net = self.diffusion._wrap_model(model)  # original timesteps, as the sampling loop's cond_fn
        B = x.shape[0]
        for i in range(0, B, self.microbatch):
            sl = slice(i, i + self.microbatch)
            last = i + self.microbatch >= B
            sync = (self.ddp_model.no_sync() if backward and self.use_ddp and not last
                    else contextlib.nullcontext())
            with sync:
                logits = net(x[sl], t[sl])
                loss = F.cross_entropy(logits.float(), labels[sl], reduction="none")
                log_loss_dict(self.diffusion, t[sl], {
                    f"{prefix}_loss": loss.detach(),
                    f"{prefix}_acc@1": top_k_correct(logits.detach(), labels[sl], 1),
                    f"{prefix}_acc@5": top_k_correct(logits.detach(), labels[sl], 5),
                })
                if backward:
                    self.mp_trainer.backward(loss.sum() / B)

    def forward_backward(self, batch, cond):
        """Gradients of the mean cross-entropy of this rank's batch (in .grad)."""
        self.mp_trainer.zero_grad()
        if batch.shape[0] != self.batch_size:
            raise ValueError(f"got a batch of {batch.shape[0]}, expected {self.batch_size}")
        self._sample_shape = tuple(batch.shape[1:])
        t, _, noise, _ = self.step_randomness()
        dev = self.device
        x, t = self._inputs(batch.to(dev), t.to(dev), noise.to(dev))
        self._classify(self.ddp_model, x, t, cond["y"].to(dev), "train", backward=True)

    def run_step(self, batch, cond):
        super().run_step(batch, cond)
        if self.val_data is not None and self.step % self.eval_interval == 0:
            self.evaluate()

    def val_randomness(self, batch_shape):
        """(t, noise) of this rank's held-out batch at ``self.step``: uniform t, Gaussian noise."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "val", self.step, self.rank))
        t = torch.randint(0, self.diffusion.num_timesteps, (batch_shape[0],), generator=gen)
        return t, torch.randn(batch_shape, generator=gen)

    def evaluate(self):
        """One held-out batch, logged under ``val_`` (no gradients)."""
        batch, cond = self.val_data.batch(self.step // self.eval_interval)
        t, noise = self.val_randomness(tuple(batch.shape))
        dev = self.device
        x, t = self._inputs(batch.to(dev), t.to(dev), noise.to(dev))
        self.model.eval()
        try:
            with torch.no_grad():
                self._classify(self.model, x, t, cond["y"].to(dev), "val", backward=False)
        finally:
            self.model.train()

    def log_step(self, lr):
        super().log_step(lr)
        if self.iterations:
            logger.logkv("iterations", self.iterations)
