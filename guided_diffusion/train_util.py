"""The training loop (upstream ``TrainLoop`` semantics, made exactly resumable).

Steps. ``step`` counts optimizer steps done; ``model{k:06d}.pt`` is the state after k steps, and
training resumed from it continues with step k (0-based), so "N steps" equals "k steps, resume,
N - k steps" bit for bit on the CPU (model, EMA, optimizer, loss scale, loss-aware sampler state).

Randomness. Nothing depends on what happened before a step; everything is derived from
(seed, step) -- and the rank only where it must be:
  * data order and flips: ``StepBatcher.batch(step)`` (same rule);
  * timesteps: one CPU generator seeded from (seed, step) draws the whole *global* batch's
    timesteps, and each rank takes its slice;
  * noise and DDPM-IP perturbation noise: per sample, from (seed, step, global sample index);
  * dropout: ``torch.manual_seed(derive_seed(seed, "dropout", step, rank))`` before the step.
So a run with R ranks of batch b draws the same data, timesteps and noise as one process with
batch R*b (only dropout masks differ).

Differences from upstream, on purpose:
  * microbatch losses are weighted by their share of the batch, so splitting into microbatches
    gives the gradient of the full-batch mean (upstream summed microbatch means);
  * ``lr_anneal_steps``: lr_t = lr * (1 - t / lr_anneal_steps) for step t (upstream lagged one
    step), and training stops at lr_anneal_steps; ``max_steps`` also stops it;
  * ``ema_warmup``: EMA rate min(rate, (1 + t) / (10 + t)) at step t, so short runs do not keep
    the random initialisation in the EMA weights;
  * the opt file is ``{"optimizer": opt.state_dict(), "step", "lg_loss_scale",
    "schedule_sampler", "global_batch_size", "seed"}`` (a plain optimizer state_dict, as
    upstream wrote, is also accepted on resume).
Bit-exactness is a CPU property: on CUDA the same state is restored, but cuDNN / atomic-add
kernels are not deterministic, so runs (resumed or not) differ in the last bits.
Checkpoints (CPU tensors) are written by rank 0 only, atomically (temp file + ``os.replace``); the model file
is written last, so a present ``model{k}.pt`` means its ema/opt files are complete.
"""

import contextlib
import functools
import os
import re
import sys
import time

import torch

from . import dist_util, io_util

from . import logger
from .checkpoint import CheckpointError, check_state_dict
from .fp16_util import MixedPrecisionTrainer
from .io_util import derive_seed
from .io_util import torch_save_atomic as save_atomic
from .nn import update_ema
from .resample import SCHEDULE_SAMPLERS, LossAwareSampler, UniformSampler

__all__ = [
    "TrainLoop",
    "derive_seed",
    "parse_resume_step_from_filename",
    "parse_ema_rates",
    "ema_rate_at",
    "checkpoint_paths",
    "save_atomic",
    "validate_train_args",
]


def parse_resume_step_from_filename(filename):
    """``.../model001234.pt`` -> 1234; another name -> 0 (weights only, training from step 0)."""
    m = re.fullmatch(r"model(\d+)\.pt", os.path.basename(filename))
    return int(m.group(1)) if m else 0


def parse_ema_rates(ema_rate):
    """"0.9999" / "0.999,0.9999" / a float / a list -> list of floats in [0, 1)."""
    if isinstance(ema_rate, (list, tuple)):
        rates = [float(r) for r in ema_rate]
    elif isinstance(ema_rate, (int, float)):
        rates = [float(ema_rate)]
    else:
        text = str(ema_rate).strip()
        try:
            rates = [float(r) for r in text.split(",")] if text else []
        except ValueError:
            raise ValueError(f"ema_rate {ema_rate!r}: expected a comma list of numbers, e.g. 0.9999") from None
    for r in rates:
        if not 0.0 <= r < 1.0:
            raise ValueError(f"ema_rate {r}: must be in [0, 1)")
    return rates


def ema_rate_at(rate, step, warmup):
    """The EMA rate used for the update after step ``step`` (0-based)."""
    return min(rate, (1.0 + step) / (10.0 + step)) if warmup else rate


def checkpoint_paths(out_dir, step, ema_rates):
    """{"model": ..., "opt": ..., "ema": {rate: ...}} for ``step`` in ``out_dir``."""
    return {
        "model": os.path.join(out_dir, f"model{step:06d}.pt"),
        "opt": os.path.join(out_dir, f"opt{step:06d}.pt"),
        "ema": {r: os.path.join(out_dir, f"ema_{r}_{step:06d}.pt") for r in ema_rates},
    }


def _to_cpu(obj):
    """``obj`` with every tensor moved to the CPU (checkpoints load anywhere)."""
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _gather_fn():
    return dist_util.all_gather_object if dist_util.is_distributed() else None


class TrainLoop:
    """Upstream's training loop with step-derived randomness and exact resume.

    :param model: the UNet (already on ``device``; float32 -- ``use_fp16`` converts it here).
    :param diffusion: a GaussianDiffusion (``training_losses``).
    :param data: a ``StepBatcher`` (``batch(step) -> (x, cond)``) giving this rank's batch.
    :param batch_size: per-rank batch size; :param microbatch: split size (-1 or 0: no split).
    :param lr, weight_decay: AdamW settings; :param lr_anneal_steps: linear decay to 0 and stop.
    :param ema_rate: comma list / float(s); :param ema_warmup: see the module docstring.
    :param log_interval, save_interval: in steps (save_interval 0: only the final step).
    :param resume_checkpoint: ``.../model{k}.pt``; ema/opt files are found beside it.
    :param schedule_sampler: a ScheduleSampler (default uniform).
    :param max_steps: stop after this many steps in total (0: no limit).
    :param out_dir: where checkpoints go (default: the logger's dir).
    :param seed: root of all randomness.
    :param rank, world_size: default from ``dist_util``.
    """

    def __init__(
        self,
        *,
        model,
        diffusion,
        data,
        batch_size,
        microbatch,
        lr,
        ema_rate,
        log_interval,
        save_interval,
        resume_checkpoint="",
        use_fp16=False,
        fp16_scale_growth=1e-3,
        schedule_sampler=None,
        weight_decay=0.0,
        lr_anneal_steps=0,
        max_steps=0,
        out_dir=None,
        seed=0,
        ema_warmup=True,
        rank=None,
        world_size=None,
    ):
        self.model = model
        self.diffusion = diffusion
        self.data = data
        self.batch_size = int(batch_size)
        self.microbatch = int(microbatch) if microbatch and microbatch > 0 else self.batch_size
        self.lr = float(lr)
        self.ema_rate = parse_ema_rates(ema_rate)
        self.ema_warmup = bool(ema_warmup)
        self.log_interval = int(log_interval)
        self.save_interval = int(save_interval)
        self.resume_checkpoint = resume_checkpoint or ""
        self.use_fp16 = bool(use_fp16)
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)
        self.weight_decay = float(weight_decay)
        self.lr_anneal_steps = int(lr_anneal_steps)
        self.max_steps = int(max_steps)
        self.out_dir = out_dir or logger.get_dir() or "."
        self.seed = int(seed)
        self.rank = dist_util.get_rank() if rank is None else int(rank)
        self.world_size = dist_util.get_world_size() if world_size is None else int(world_size)
        self.global_batch = self.batch_size * self.world_size
        self.device = next(model.parameters()).device
        if getattr(data, "batch_size", self.batch_size) != self.batch_size:
            raise ValueError(f"data gives batches of {data.batch_size}, but batch_size is {self.batch_size}")

        self.step = parse_resume_step_from_filename(self.resume_checkpoint) if self.resume_checkpoint else 0
        self._last_saved = None
        self.stopped_by = None
        self._load_and_sync_parameters()
        self.mp_trainer = MixedPrecisionTrainer(
            model=self.model, use_fp16=self.use_fp16, fp16_scale_growth=fp16_scale_growth
        )
        self.opt = torch.optim.AdamW(self.mp_trainer.master_params, lr=self.lr, weight_decay=self.weight_decay)
        if self.resume_checkpoint:
            self._load_optimizer_state()
            self.ema_params = [self._load_ema_parameters(rate) for rate in self.ema_rate]
        else:
            self.ema_params = [self._copy_master_params() for _ in self.ema_rate]
        self.ddp_model = dist_util.wrap_ddp(self.model)
        self.use_ddp = self.ddp_model is not self.model

    # ------------------------------------------------------------------ resume
    def _resume_path(self, name):
        return os.path.join(os.path.dirname(self.resume_checkpoint) or ".", name)

    def _load_and_sync_parameters(self):
        if self.resume_checkpoint:
            logger.log(f"loading model from {self.resume_checkpoint} (step {self.step})")
            state = dist_util.load_state_dict(self.resume_checkpoint, map_location="cpu")
            try:
                check_state_dict(self.model, state, self.resume_checkpoint)
            except CheckpointError as exc:
                raise CheckpointError(str(exc).replace("--model_path", "--resume_checkpoint", 1)) from None
            self.model.load_state_dict(state, strict=True)
        dist_util.sync_params(self.model.parameters())

    def _copy_master_params(self):
        return [p.detach().clone().float() for p in self.mp_trainer.master_params]

    def _load_ema_parameters(self, rate):
        path = self._resume_path(f"ema_{rate}_{self.step:06d}.pt")
        exists = dist_util.broadcast_object(io_util.exists(path) if self.rank == 0 else None)
        if not exists:
            logger.log(f"WARNING: {path} not found; EMA {rate} starts from the model weights")
            return self._copy_master_params()
        logger.log(f"loading EMA from {path}")
        state = dist_util.load_state_dict(path, map_location="cpu")
        check_state_dict(self.model, state, path)
        return [t.to(self.device) for t in self.mp_trainer.state_dict_to_master_params(state)]

    def _load_optimizer_state(self):
        path = self._resume_path(f"opt{self.step:06d}.pt")
        exists = dist_util.broadcast_object(io_util.exists(path) if self.rank == 0 else None)
        if not exists:
            logger.log(f"WARNING: {path} not found; the optimizer starts fresh (not an exact resume)")
            return
        logger.log(f"loading optimizer state from {path}")
        state = dist_util.load_state_dict(path, map_location="cpu")  # the optimizer moves its state
        if "optimizer" not in state:  # upstream: the plain optimizer state_dict
            state = {"optimizer": state}
        self.opt.load_state_dict(state["optimizer"])
        for group in self.opt.param_groups:  # these come from the flags, not the file
            group["lr"] = self.lr
            group["weight_decay"] = self.weight_decay
        if "lg_loss_scale" in state:
            self.mp_trainer.lg_loss_scale = float(state["lg_loss_scale"])
        if "schedule_sampler" in state:
            self.schedule_sampler.load_state_dict(state["schedule_sampler"])
        elif isinstance(self.schedule_sampler, LossAwareSampler):
            logger.log("WARNING: no schedule sampler state in the opt file; it starts fresh")
        for key, mine in (("global_batch_size", self.global_batch), ("seed", self.seed)):
            if key in state and int(state[key]) != mine:
                logger.log(
                    f"WARNING: {key} was {int(state[key])} before the resume, now {mine}: "
                    f"training continues but does not repeat the uninterrupted run"
                )

    # ------------------------------------------------------------------ loop
    def _done(self):
        if self.lr_anneal_steps and self.step >= self.lr_anneal_steps:
            return True
        return bool(self.max_steps) and self.step >= self.max_steps

    def run_loop(self, should_stop=None):
        """Train until lr_anneal_steps / max_steps (forever if both are 0); save the last step.

        :param should_stop: optional callable, called after every step on every rank (it may be a
            collective); when it returns something true, the current step is saved (as at a save
            interval: model, ema, opt) and the loop returns early, with ``self.stopped_by`` set
            to that value (None after a complete run).
        """
        self.stopped_by = None
        t0 = time.time()
        first = True
        while not self._done():
            batch, cond = self.data.batch(self.step)
            started = time.time()
            self.run_step(batch, cond)
            self.step += 1
            if first:  # one line at once, so a slow or memory-hungry run is visible before log_interval
                logger.log(first_step_line(self.step, time.time() - started, self._steps_left(), self.microbatch,
                                           self.batch_size))
                first = False
            if self.step % self.log_interval == 0:
                logger.logkv("sec_per_step", (time.time() - t0) / self.log_interval)
                logger.dumpkvs(_gather_fn())
                t0 = time.time()
            if self.save_interval and self.step % self.save_interval == 0:
                self.save()
            if should_stop is not None:
                self.stopped_by = should_stop()
                if self.stopped_by:
                    break
        if self._last_saved != self.step:
            self.save()

    def _steps_left(self):
        ends = [n for n in (self.lr_anneal_steps, self.max_steps) if n]
        return max(0, min(ends) - self.step) if ends else None

    def current_lr(self, step=None):
        step = self.step if step is None else step
        if not self.lr_anneal_steps:
            return self.lr
        return self.lr * (1.0 - step / self.lr_anneal_steps)

    def run_step(self, batch, cond):
        """One optimizer step on this rank's ``batch`` at ``self.step``."""
        torch.manual_seed(derive_seed(self.seed, "dropout", self.step, self.rank))
        lr = self.current_lr()
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.forward_backward(batch, cond)
        took_step = self.mp_trainer.optimize(self.opt)
        if took_step:
            self._update_ema()
        self.log_step(lr)

    def step_randomness(self, step=None):
        """This rank's (timesteps, importance weights, noise, perturb_noise or None) at ``step``.

        Timesteps come from one generator for the global batch; noise per global sample index.
        """
        step = self.step if step is None else step
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "timesteps", step))
        t, weights = self.schedule_sampler.sample(self.global_batch, torch.device("cpu"), generator=gen)
        lo = self.rank * self.batch_size
        t, weights = t[lo : lo + self.batch_size], weights[lo : lo + self.batch_size]
        shape = self._sample_shape
        noise, perturb = [], []
        use_perturb = getattr(self.diffusion, "input_pertub", 0.0) > 0
        for i in range(lo, lo + self.batch_size):
            gen.manual_seed(derive_seed(self.seed, "noise", step, i))
            noise.append(torch.randn(shape, generator=gen))
            if use_perturb:
                gen.manual_seed(derive_seed(self.seed, "perturb", step, i))
                perturb.append(torch.randn(shape, generator=gen))
        noise = torch.stack(noise)
        perturb = torch.stack(perturb) if use_perturb else None
        return t, weights, noise, perturb

    def forward_backward(self, batch, cond):
        """Gradients of the importance-weighted mean loss of this rank's batch (in .grad)."""
        self.mp_trainer.zero_grad()
        if batch.shape[0] != self.batch_size:
            raise ValueError(f"got a batch of {batch.shape[0]}, expected {self.batch_size}")
        self._sample_shape = tuple(batch.shape[1:])
        t, weights, noise, perturb = self.step_randomness()
        dev = self.device
        batch, t, weights, noise = batch.to(dev), t.to(dev), weights.to(dev), noise.to(dev)
        perturb = perturb.to(dev) if perturb is not None else None
        cond = {k: v.to(dev) for k, v in cond.items()}
        all_losses = []
        B = self.batch_size
        for i in range(0, B, self.microbatch):
            sl = slice(i, i + self.microbatch)
            last = i + self.microbatch >= B
            compute_losses = functools.partial(
                self.diffusion.training_losses,
                self.ddp_model,
                batch[sl],
                t[sl],
                model_kwargs={k: v[sl] for k, v in cond.items()},
                noise=noise[sl],
                perturb_noise=perturb[sl] if perturb is not None else None,
            )
            sync_ctx = self.ddp_model.no_sync() if (self.use_ddp and not last) else contextlib.nullcontext()
            with sync_ctx:
                losses = compute_losses()
                loss = (losses["loss"] * weights[sl]).sum() / B
                self.mp_trainer.backward(loss)
            all_losses.append(losses["loss"].detach())
            log_loss_dict(self.diffusion, t[sl], {k: v * weights[sl] for k, v in losses.items()})
        if isinstance(self.schedule_sampler, LossAwareSampler):
            self.schedule_sampler.update_with_local_losses(t, torch.cat(all_losses), _gather_fn())

    def _update_ema(self):
        for rate, params in zip(self.ema_rate, self.ema_params):
            update_ema(params, self.mp_trainer.master_params, rate=ema_rate_at(rate, self.step, self.ema_warmup))

    def log_step(self, lr):
        logger.logkv("step", self.step)
        logger.logkv("samples", (self.step + 1) * self.global_batch)
        logger.logkv("lr", lr)
        logger.logkv_mean("grad_norm", self.mp_trainer.last_grad_norm)
        logger.logkv_mean("param_norm", self.mp_trainer.last_param_norm)
        if self.use_fp16:
            logger.logkv("lg_loss_scale", self.mp_trainer.lg_loss_scale)

    # ------------------------------------------------------------------ checkpoints
    def save(self):
        """Write ema, opt, then model files for ``self.step`` (rank 0), then wait for all ranks."""
        if self.rank == 0:
            io_util.makedirs(self.out_dir)
            paths = checkpoint_paths(self.out_dir, self.step, self.ema_rate)
            for rate, params in zip(self.ema_rate, self.ema_params):
                save_atomic(_to_cpu(self.mp_trainer.master_params_to_state_dict(params)), paths["ema"][rate])
            save_atomic(
                _to_cpu({
                    "optimizer": self.opt.state_dict(),
                    "step": self.step,
                    "lg_loss_scale": self.mp_trainer.lg_loss_scale,
                    "schedule_sampler": self.schedule_sampler.state_dict(),
                    "global_batch_size": self.global_batch,
                    "seed": self.seed,
                }),
                paths["opt"],
            )
            save_atomic(_to_cpu(self.mp_trainer.master_params_to_state_dict()), paths["model"])
            logger.log(f"saved {paths['model']} (+ opt, {len(self.ema_rate)} ema)")
        self._last_saved = self.step
        dist_util.barrier()


def validate_train_args(args):
    """One-line errors for the TrainConfig flags of image_train.py / super_res_train.py (an argparse namespace)."""
    if not args.data_dir:
        raise ValueError("--data_dir is empty: pass a folder of images or an .npz file")
    if args.schedule_sampler not in SCHEDULE_SAMPLERS:
        raise ValueError(f"--schedule_sampler {args.schedule_sampler!r}: use {' or '.join(SCHEDULE_SAMPLERS)}")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.microbatch == 0 or args.microbatch < -1:
        raise ValueError(f"--microbatch must be -1 (no split) or >= 1, got {args.microbatch}")
    if args.log_interval < 1:
        raise ValueError(f"--log_interval must be >= 1, got {args.log_interval}")
    for name in ("save_interval", "lr_anneal_steps", "max_steps"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.resume_checkpoint and not io_util.isfile(args.resume_checkpoint):
        raise FileNotFoundError(f"--resume_checkpoint {args.resume_checkpoint}: no such file")
    parse_ema_rates(args.ema_rate)


def log_loss_dict(diffusion, ts, losses):
    """Mean of each loss term, and per quarter of the timestep range (``<key>_q0`` .. ``_q3``)."""
    ts_list = ts.detach().cpu().tolist()
    num = diffusion.num_timesteps
    for key, values in losses.items():
        vals = values.detach().float().cpu().tolist()
        for v in vals:
            logger.logkv_mean(key, v)
        for t, v in zip(ts_list, vals):
            logger.logkv_mean(f"{key}_q{int(4 * t / num)}", v)


# ------------------------------------------------------------------ the shared frame of the training scripts
def peak_memory_mb():
    """This process's peak resident memory in MB (CPU; ``ru_maxrss``), or None where unknown."""
    try:
        import resource
    except ImportError:
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def first_step_line(step, seconds, steps_left, microbatch, batch_size):
    """The line logged after the first training step: its time, the time left, the peak memory."""
    text = f"step {step} took {seconds:.1f} s"
    if steps_left is not None:
        text += f"; {steps_left} step(s) left, about {seconds * steps_left / 60:.1f} min at this rate"
    mb = peak_memory_mb()
    if mb is not None:
        text += f"; peak memory {mb:,.0f} MB"
        if microbatch in (-1, 0) or microbatch >= batch_size:
            text += " (--microbatch N < --batch_size lowers it)"
    return text


def begin_run(args):
    """Set up processes and the log of a training script; write ``out_dir/args.json`` (rank 0).

    :return: ``dist_util.info()`` (rank, world size, ...).
    """
    import json

    from .io_util import write_text_atomic

    info = dist_util.setup_dist()
    logger.configure(args.out_dir, rank=info.rank)
    if info.rank == 0:
        write_text_atomic(io_util.join(args.out_dir, "args.json"), json.dumps(vars(args), indent=1, sort_keys=True))
    logger.log(f"{info.world_size} process(es), device {dist_util.dev()}")
    return info


def diffusion_train_loop_kwargs(args, diffusion, info):
    """The :class:`TrainLoop` keywords that ``image_train.py`` and ``super_res_train.py`` take from their flags."""
    from .resample import create_named_schedule_sampler

    return dict(
        batch_size=args.batch_size, microbatch=args.microbatch, lr=args.lr, ema_rate=args.ema_rate,
        ema_warmup=args.ema_warmup, log_interval=args.log_interval, save_interval=args.save_interval,
        resume_checkpoint=args.resume_checkpoint, use_fp16=args.use_fp16, fp16_scale_growth=args.fp16_scale_growth,
        schedule_sampler=create_named_schedule_sampler(args.schedule_sampler, diffusion),
        weight_decay=args.weight_decay, lr_anneal_steps=args.lr_anneal_steps, max_steps=args.max_steps,
        out_dir=args.out_dir, seed=args.seed, rank=info.rank, world_size=info.world_size,
    )


def finish_run(loop, world_size, ema_rates=None):
    """Run ``loop`` until done or a SIGTERM/SIGINT on any rank, then close the log and the processes.

    On a signal the loop saves a checkpoint after the current step; this prints the command that
    resumes from it and exits 128 + signal (:func:`guided_diffusion.jobs.control.preempt`).
    """
    from .jobs import control as job_control

    logger.log(f"training from step {loop.step}")
    with job_control.StopSignals(what="saving a checkpoint after this step") as signals:
        loop.run_loop(should_stop=lambda: job_control.stop_requested_anywhere(signals))
    if loop.stopped_by:
        rates = loop.ema_rate if ema_rates is None else ema_rates
        model_path = checkpoint_paths(loop.out_dir, loop.step, rates)["model"]
        saved = "opt, ema" if rates else "opt"
        message = (f"stopped by {loop.stopped_by.name} at step {loop.step}: saved {model_path} (+ {saved}); "
                   f"resume with: {job_control.resume_command(world_size, {'--resume_checkpoint': model_path})}")
        logger.log(message)
        logger.close()
        try:
            job_control.preempt(loop.stopped_by, message)
        finally:
            dist_util.cleanup()
    logger.log(f"done at step {loop.step}")
    logger.close()
    dist_util.barrier()
    dist_util.cleanup()
    return loop
