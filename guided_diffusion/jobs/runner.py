"""The one resumable-parts runner under the sampling and NLL jobs.

A job states what one batch does (:class:`PartsJob`); :func:`run_parts` does the rest, the same
way for both, with W processes (W = 1 without a process group):

1. rank 0 takes the output's lock (``OUT.lock``, :mod:`guided_diffusion.jobs.control`) and prepares
   ``OUT.parts/`` (:func:`guided_diffusion.jobs.parts.prepare_parts_dir`): finished parts made with
   the same pixel settings are kept (and checked by the job), different settings are refused;
2. the items still missing are cut into batches of ``batch_size``; batch j goes to rank j % W;
3. ranks work in rounds (one batch each) and after every round sum the job's counters, a failure
   flag and the SIGTERM/SIGINT flags with one all_reduce: a failure on any rank stops all of them
   after that round (the failing rank raises, the others ``StopRun``), a signal stops them at that
   round boundary with the resume command. Each batch writes its own part file atomically, so a
   killed process loses only its batch in flight;
4. rank 0 assembles the outputs from the parts (:meth:`PartsJob.finish`).
"""

import hashlib
import math
import os
import sys
import time

from .. import diffusers_model, dist_util, io_util
from . import control
from . import parts as sample_parts
from ..script_util import model_from_checkpoint


def say(text):
    """One line on stderr."""
    sys.stderr.write(text + "\n")


def read_on_rank0(path, flag, *, error=None, model=False):
    """Collective: the bytes of ``path`` on every rank (read once on rank 0, broadcast in chunks)
    and their SHA-256 hex (rank 0; None elsewhere). ``path`` is a file, or with ``model`` (a diffusion
    model's path) also a diffusers model folder (its files packed by
    :func:`guided_diffusion.diffusers_model.read_on_rank0`).
    A missing path is a one-line error naming ``flag``; ``error`` (an exception class, default
    ``CheckpointError``) is its type."""
    from ..errors import CheckpointError

    def check():
        if model and io_util.is_cloud(path) and not io_util.isfile(path) and io_util.isdir(path):
            raise (error or CheckpointError)(f"{flag} {path}: a diffusers model folder must be on a local disk "
                                             "(copy it down first); single checkpoint files may be cloud paths")
        if not io_util.isfile(path) and not (model and os.path.isdir(path)):
            raise (error or CheckpointError)(f"{flag} {path}: no such file")

    dist_util.on_rank0(check)
    data = diffusers_model.read_model_bytes(path) if model else dist_util.read_file_on_rank0(path)
    return data, (hashlib.sha256(data).hexdigest() if dist_util.get_rank() == 0 else None)


def build_network(model_cfg, diffusion_cfg, model_path, device, *, data, super_res=None):
    """The one model builder of the jobs: a diffusers folder's network (from ``data``, the bytes
    :func:`read_on_rank0` returned) wrapped to the ADM interface, else
    :func:`~guided_diffusion.script_util.model_from_checkpoint` (ADM checkpoint, strict load,
    ``weights_only=True``); on ``device``, in eval mode."""
    if super_res is None:
        model = diffusers_model.maybe_diffusers_model(model_path, diffusion_cfg, data or b"")
        if model is not None:
            return model.to(device).eval()
    return model_from_checkpoint(model_cfg, model_path, device, data=data, super_res=super_res)


class PartsJob:
    """What one resumable job states; :func:`run_parts` runs it.

    Attributes: ``out_path`` (the final output; its parts live in ``out_path + ".parts"``),
    ``num`` (items 0..num-1), ``batch_size``, ``overwrite``.
    """

    out_path = ""
    num = 0
    batch_size = 1
    overwrite = False

    def meta(self):
        """Rank 0: {"flags": pixel settings + input hashes, "info": recorded only} for the parts' meta."""
        raise NotImplementedError

    def prepare_kwargs(self):
        """Extra keywords of :func:`~guided_diffusion.jobs.parts.prepare_parts_dir` (part verification)."""
        return {}

    def keep(self, parts_dir, parts, warnings):
        """Rank 0: the finished parts to keep, after the job's own checks, and the counters they
        contribute (a list whose first entry is the number of finished items). Default: every part,
        counted by the items they cover."""
        done = sample_parts.done_intervals(parts, self.num)
        return parts, [sum(end - start for start, end in done)]

    def run_batch(self, parts_dir, start, end):
        """This rank's batch: items start..end-1 into one part file. Returns its counters (same
        length as :meth:`keep`'s, first entry end - start)."""
        raise NotImplementedError

    def progress(self, already):
        """Rank 0: an object with ``update(round_counters, counters)`` and ``close()``, or None."""
        return None

    def finish(self, parts_dir):
        """Rank 0, after every batch is done: write the outputs from the parts; its return value is
        :func:`run_parts`'s."""
        raise NotImplementedError


class RunStats:
    """What the rounds did: ``made`` items this run, ``seconds`` the rounds took, ``counters``."""

    def __init__(self, made, seconds, counters):
        self.made, self.seconds, self.counters = made, seconds, counters


def run_parts(job, on_rounds_done=None):
    """Collective: run ``job`` (a :class:`PartsJob`) resumably over every rank (see the module docstring).

    ``on_rounds_done(stats)``: called on every rank after the last round (a :class:`RunStats`).
    Returns ``job.finish(parts_dir)`` on rank 0, None on the others.
    """
    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    parts_dir = sample_parts.parts_dir_for(job.out_path)
    control.current().lock_output(job.out_path)  # one writer per output (rank 0 holds the lock)

    def prepare():
        os.makedirs(os.path.dirname(job.out_path) or ".", exist_ok=True)
        parts, warnings = sample_parts.prepare_parts_dir(parts_dir, job.meta(), overwrite=job.overwrite,
                                                         **job.prepare_kwargs())
        parts, counters = job.keep(parts_dir, parts, warnings)
        return sample_parts.done_intervals(parts, job.num), warnings, counters

    done, warnings, counters = dist_util.on_rank0(prepare)
    if rank == 0:
        for line in warnings:
            say(f"warning: {line}")
    batches = sample_parts.plan_batches(done, job.num, job.batch_size)
    mine = batches[rank::world]
    already = counters[0]
    bar = job.progress(already) if rank == 0 and batches else None
    started = time.time()
    for r in range(math.ceil(len(batches) / world)):
        exc, mine_counts = None, [0] * len(counters)
        if r < len(mine):
            start, end = mine[r]
            try:
                mine_counts = list(job.run_batch(parts_dir, start, end))
            except Exception as e:  # reported to every rank after this round
                exc = e
        signals = control.current().signal_counts()
        totals = dist_util.all_reduce_floats([*mine_counts, exc is not None, *signals])
        round_counts, failures, stops = totals[: len(counters)], totals[len(counters)], totals[len(counters) + 1:]
        counters = [c + v for c, v in zip(counters, round_counts)]
        if failures:
            if bar is not None:
                bar.close()
            dist_util.check_all(exc)
        if bar is not None:
            bar.update(round_counts, counters)
        control.current().stop_if_requested([int(v) for v in stops], done=int(counters[0]), num_samples=job.num,
                                            parts_dir=parts_dir, bar=bar)  # SIGTERM/SIGINT on any rank
    if bar is not None:
        bar.close()
    if on_rounds_done is not None:
        on_rounds_done(RunStats(int(counters[0] - already), time.time() - started, counters))
    return job.finish(parts_dir) if rank == 0 else None
