"""Bits/dim of a data set under a diffusion model's variational bound (``scripts/image_nll.py``).

Upstream's ``calc_bpd_loop`` semantics, per image x_0 (Ho et al. 2020 eq. 5, in bits per dimension):

    total_bpd = prior_bpd + sum over all S steps t of vb_t,
    prior_bpd = KL(q(x_T | x_0) || N(0, I)),
    vb_t      = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, the discretised decoder NLL
                at t = 0, with x_t = q_sample(x_0, t, noise_t),

and the per-step diagnostics ``mse`` (eps error) and ``xstart_mse``. ``noise_t`` of image k depends
only on (seed, k, t) (:class:`~guided_diffusion.sampler.generate.SampleNoise`, stream t + 1), so the result
does not depend on the process count or interruptions (the same bytes for the same batch size; across
batch sizes the network's batched convolutions may round differently, ~1e-6 bits/dim).

A run over W processes (the resumable-parts runner, :func:`guided_diffusion.jobs.runner.run_parts`,
as for sampling; one batch is :class:`_NllParts`): image k (k < num_samples, in data-set order) is in batch k // batch_size;
batch j goes to rank j % W; ranks work in rounds and after each round sum (bits/dim, images,
failures, stop signals) with one all_reduce, so rank 0 prints the running mean over every rank and
a failure or a SIGTERM/SIGINT on any rank stops all of them at the same round. Each finished batch
is a part file ``OUT_DIR/bpd.npz.parts/part_{start}_{end}.npz`` (atomic); a rerun of the same
command skips them (changed settings or checkpoint are refused, ``--overwrite True`` starts over).
At the end rank 0 reads the parts and writes, atomically:

* ``bpd.npz``: ``total_bpd`` and ``prior_bpd`` (N,) float64 per image, ``indices`` (N,);
* ``vb_terms.npz``, ``mse_terms.npz``, ``xstart_mse_terms.npz``: ``arr_0`` (S,) the mean over images
  of each per-step term, columns in decreasing t (upstream's files);
* ``bpd.json``: the mean bits/dim, its standard error, the mean prior term, N, S, the estimator and the
  settings.

With ``--t_strata K`` each image costs K + 1 network calls instead of S: the t = 0 term plus one
timestep drawn per image in each of K strata of 1..S-1 (:func:`stratify_timesteps`), weighted by the
stratum's width — an unbiased estimate of the same bound whose extra variance shows in the standard
error; the per-step ``*_terms.npz`` are replaced by ``vb_strata.npz`` (per-image t, vb, weights).
"""

import dataclasses
import json
import math
import os
import time

import numpy as np
import torch

from .. import diffusers_model, dist_util
from . import control
from . import parts as sample_parts
from ..checkpoint import CheckpointError
from .runner import PartsJob, build_network, read_on_rank0, run_parts, say
from ..sampler.generate import SampleNoise
from ..image_datasets import ImageDataset
from ..io_util import save_npz_atomic, write_text_atomic
from ..script_util import diffusion_from_config
from ..settings import pixel_settings

TERMS = ("vb", "mse", "xstart_mse")
OUT_NAME = "bpd.npz"


class NllJob:
    """The settings of one bits/dim run: an NllConfig, a ModelConfig and a DiffusionConfig."""

    def __init__(self, nll, model, diffusion):
        self.nll, self.model, self.diffusion = nll, model, diffusion

    def out_path(self):
        return os.path.join(self.nll.out_dir, OUT_NAME)

    def flags(self):
        return {**dataclasses.asdict(self.nll), **dataclasses.asdict(self.model), **dataclasses.asdict(self.diffusion)}

    def validate(self):
        if not self.nll.data_dir:
            raise ValueError("--data_dir is empty: pass a folder of images or an .npz with arr_0")
        if not self.nll.model_path:
            raise CheckpointError("--model_path is empty: pass the diffusion model checkpoint")


STRATUM_STREAM = 1 << 20  # SampleNoise stream of stratum j's timestep draw: STRATUM_STREAM + j (noise uses t + 1)


def stratify_timesteps(steps, strata):
    """K = ``strata`` contiguous, non-empty strata [(lo, hi), ...] that cover timesteps 1..steps-1.

    Edges follow 1 + (steps - 1) (j / K)^2, so widths grow linearly with t: the small-t terms, which
    are large and change fast, get strata of one timestep; K = steps - 1 gives one stratum per
    timestep (the exact bound). Raises ValueError naming ``--t_strata`` outside 1..steps-1.
    """
    if not 1 <= strata <= steps - 1:
        raise ValueError(f"--t_strata {strata}: use 0 (every timestep) or 1..{steps - 1} (the diffusion has "
                         f"{steps} timesteps)")
    edges = [1]
    for j in range(1, strata):
        edge = 1 + int((steps - 1) * (j / strata) ** 2)
        edges.append(min(max(edge, edges[-1] + 1), steps - (strata - j)))
    edges.append(steps)
    return list(zip(edges[:-1], edges[1:]))


def bpd_terms(model, diffusion, x, indices, *, seed, clip_denoised=True, model_kwargs=None, t_strata=0):
    """Bits/dim of images with global ``indices`` (B,); the noise of image k at t is (seed, k, t).

    ``t_strata`` 0: upstream's ``calc_bpd_loop`` (every term; columns in decreasing t). K > 0: the
    stratified estimate, columns [t_K, ..., t_1, 0] (decreasing t) with t_j drawn per image uniformly
    in stratum j (:func:`stratify_timesteps`) from (seed, k, j):

        total_bpd = prior_bpd + vb_0 + sum_j |stratum j| * vb_{t_j},

    whose expectation over the draws is the exact total of the same noise (up to the modulo bias of
    the 32-bit integer draw: pick probabilities off by under width / 2^32), each vb_t being the one
    ``calc_bpd_loop`` computes (same x_t). Returns "total_bpd", "prior_bpd" (B,), "vb", "mse",
    "xstart_mse" (B, K+1) and "t" (B, K+1) int64 in that case.
    """
    noise = SampleNoise(seed)
    shape = tuple(x.shape[1:])
    idx = indices.to(x.device)
    if not t_strata:
        return diffusion.calc_bpd_loop(model, x, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
                                       noise_fn=lambda i, like: noise.normal(idx, i + 1, shape).to(like.device))
    strata = stratify_timesteps(diffusion.num_timesteps, t_strata)
    picks = [lo + noise.integers(idx.cpu(), STRATUM_STREAM + j, hi - lo) for j, (lo, hi) in enumerate(strata)]
    t_columns = torch.stack(picks[::-1] + [torch.zeros_like(picks[0])], dim=1)
    weights = torch.tensor([hi - lo for lo, hi in strata][::-1] + [1], dtype=torch.float64)

    def column_noise(k, t, like):
        out = torch.empty_like(like)
        t = t.cpu()
        for value in torch.unique(t).tolist():
            rows = (t == value).nonzero()[:, 0]
            out[rows.to(like.device)] = noise.normal(idx[rows.to(idx.device)], value + 1, shape).to(like.device)
        return out

    terms = diffusion.vb_terms_at(model, x, t_columns, column_noise, clip_denoised, model_kwargs)
    prior = diffusion.prior_bpd(x)
    total = (terms["vb"].double() * weights.to(x.device)).sum(dim=1) + prior.double()
    return {"total_bpd": total, "prior_bpd": prior, "t": t_columns, **terms}


def write_part(parts_dir, start, out):
    """One finished batch (images start..) as a part file, atomically; returns its path.

    Holds total_bpd, prior_bpd (n,) float64, the TERMS (n, columns) float32 and, for a stratified
    estimate, the timesteps ``t`` (n, columns) int64 of its columns.
    """
    arrays = {k: out[k].detach().cpu().numpy().astype(np.float64 if k.endswith("bpd") else np.float32)
              for k in ("total_bpd", "prior_bpd") + TERMS}
    if "t" in out:
        arrays["t"] = out["t"].cpu().numpy().astype(np.int64)
    path = os.path.join(parts_dir, sample_parts.part_name(start, start + arrays["total_bpd"].shape[0]))
    save_npz_atomic(path, **arrays)
    return path


def _read_part(path, n, steps, stratified=False):
    """The arrays of one part, checked: (n,) total/prior bpd and (n, steps) terms (and t if stratified)."""
    keys = ("total_bpd", "prior_bpd") + TERMS + (("t",) if stratified else ())
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in keys}
    except Exception as exc:
        raise sample_parts.BadPartError(f"{path}: unreadable ({type(exc).__name__})") from None
    for k, v in arrays.items():
        want = (n,) if k.endswith("bpd") else (n, steps)
        if v.shape != want or not np.isfinite(v).all():
            raise sample_parts.BadPartError(f"{path}: {k} has shape {v.shape} (expected {want}) or is not finite")
    return arrays


class _NllParts(PartsJob):
    """One bits/dim run as a :class:`~guided_diffusion.jobs.runner.PartsJob`: a batch is images
    start..end-1 (:func:`bpd_terms`) into one part; the counters are [images, sum of bits/dim]."""

    def __init__(self, job, model, diffusion, dataset, device, sha):
        self.job, self.model, self.diffusion, self.dataset, self.device, self.sha = (job, model, diffusion, dataset,
                                                                                     device, sha)
        cfg = job.nll
        self.out_path, self.batch_size, self.overwrite = job.out_path(), cfg.batch_size, cfg.overwrite
        self.num = min(cfg.num_samples, len(dataset))
        self.stratified = bool(cfg.t_strata)
        self.steps = cfg.t_strata + 1 if self.stratified else diffusion.num_timesteps  # terms (columns) per image

    def meta(self):
        cfg = self.job.nll
        flags = pixel_settings(cfg, self.job.model, self.job.diffusion)
        return {"flags": {**flags, "checkpoint_sha256": self.sha},
                "info": {"model_path": os.path.abspath(cfg.model_path), "data_dir": os.path.abspath(cfg.data_dir),
                         "device": str(self.device), "torch": torch.__version__}}

    def keep(self, parts_dir, parts, warnings):
        """Every readable part whose arrays have the run's shapes; the others are deleted."""
        good, total, count = [], 0.0, 0
        for start, end, name in parts:
            path = os.path.join(parts_dir, name)
            try:
                arrays = _read_part(path, end - start, self.steps, self.stratified)
            except sample_parts.BadPartError as e:
                os.remove(path)
                warnings.append(f"{e}: deleted; its images are evaluated again")
                continue
            good.append((start, end, name))
            keep = slice(0, max(0, min(end, self.num) - start))
            total += float(arrays["total_bpd"][keep].sum())
            count += len(arrays["total_bpd"][keep])
        return good, [count, total]

    def run_batch(self, parts_dir, start, end):
        cfg, device = self.job.nll, self.device
        x, cond = self.dataset.get_batch(range(start, end))
        x = x.to(device)
        kwargs = {k: v.to(device) for k, v in cond.items()}
        out = bpd_terms(self.model, self.diffusion, x, torch.arange(start, end), seed=cfg.seed,
                        clip_denoised=cfg.clip_denoised, model_kwargs=kwargs, t_strata=cfg.t_strata)
        if not bool(torch.isfinite(out["total_bpd"]).all()):
            bad = start + int((~torch.isfinite(out["total_bpd"])).nonzero()[0, 0])
            raise ValueError(f"image {bad}: bits/dim is not finite (NaN/inf); nothing was written for its batch")
        write_part(parts_dir, start, out)
        return [end - start, float(out["total_bpd"].double().sum())]

    def progress(self, already):
        return _RunningMean(self.num) if self.job.nll.progress else None

    def finish(self, parts_dir):
        return _finish(self.job, parts_dir, self.num, self.steps, self.sha, self.diffusion.num_timesteps)


class _RunningMean:
    """Rank 0: one line per round with the running mean bits/dim over every rank's images."""

    def __init__(self, num):
        self.num, self.started = num, time.time()

    def update(self, round_counts, counters):
        count, total = int(counters[0]), counters[1]
        if count:
            say(f"done {count} of {self.num} images: bpd={total / count:.6f} ({time.time() - self.started:.0f} s)")

    def close(self):
        pass


@control.sampling_job  # output lock and SIGTERM/SIGINT at a round boundary, as for sampling
def run_nll(job, device=None):
    """Compute bits/dim of the first ``num_samples`` images over all ranks; rank 0 writes the outputs.

    Returns the summary dict on rank 0, None on the others. The lock, rounds and parts are
    :func:`guided_diffusion.jobs.runner.run_parts`'s; one batch is :class:`_NllParts`.
    """
    device = dist_util.dev() if device is None else torch.device(device)
    cfg = job.nll
    exc = None
    dataset = None
    try:
        job = NllJob(*diffusers_model.resolve_configs(cfg.model_path, (job.nll, job.model, job.diffusion)))
        cfg = job.nll
        job.validate()
        dataset = ImageDataset(cfg.data_dir, job.model.image_size, class_cond=job.model.class_cond,
                               image_channels=job.model.image_channels)
    except Exception as e:
        exc = e
    dist_util.check_all(exc)
    data, sha = read_on_rank0(cfg.model_path, "--model_path", model=True)
    model = diffusion = None
    try:
        model = build_network(job.model, job.diffusion, cfg.model_path, device, data=data)
        diffusion = diffusion_from_config(job.diffusion, sigma_small=diffusers_model.sigma_small_of(data))
        if cfg.t_strata:
            stratify_timesteps(diffusion.num_timesteps, cfg.t_strata)  # the one-line error, before any work
    except Exception as e:
        exc = e
    del data
    dist_util.check_all(exc)
    return run_parts(_NllParts(job, model, diffusion, dataset, device, sha))


def _finish(job, parts_dir, num, steps, sha, diffusion_steps):
    """Rank 0: read the parts in index order and write bpd.npz, the per-term files and bpd.json.

    ``steps``: terms (columns) per image; ``diffusion_steps``: S. Exact runs write upstream's
    *_terms.npz (per-step means); stratified runs, whose images draw different timesteps, write
    ``vb_strata.npz`` instead: ``t`` and ``vb`` (N, K+1) per image and the column ``weights`` (K+1,).
    """
    cfg = job.nll
    stratified = bool(cfg.t_strata)
    keys = ("total_bpd", "prior_bpd") + (("t", "vb") if stratified else ())
    cols = {k: [] for k in keys}
    sums = {} if stratified else {k: np.zeros(steps, dtype=np.float64) for k in TERMS}  # per-step means
    cursor = 0
    for start, end, name in sample_parts.list_parts(parts_dir):
        if end <= cursor or start >= num:
            continue
        arrays = _read_part(os.path.join(parts_dir, name), end - start, steps, stratified)
        lo, hi = cursor - start, min(end, num) - start
        for k in cols:
            cols[k].append(arrays[k][lo:hi].astype(np.int64 if k == "t" else np.float64))
        for k in sums:
            sums[k] += arrays[k][lo:hi].astype(np.float64).sum(axis=0)
        cursor = start + hi
    if cursor < num:
        raise ValueError(f"{parts_dir}: images {cursor}.. are missing; rerun the same command to evaluate them")
    total = np.concatenate(cols["total_bpd"])
    prior = np.concatenate(cols["prior_bpd"])
    out_dir = cfg.out_dir
    save_npz_atomic(os.path.join(out_dir, OUT_NAME), total_bpd=total, prior_bpd=prior,
                    indices=np.arange(num, dtype=np.int64))
    if stratified:
        widths = [hi - lo for lo, hi in stratify_timesteps(diffusion_steps, cfg.t_strata)][::-1] + [1]
        term_files = ["vb_strata.npz"]
        save_npz_atomic(os.path.join(out_dir, term_files[0]), t=np.concatenate(cols["t"]),
                        vb=np.concatenate(cols["vb"]), weights=np.asarray(widths, dtype=np.float64))
    else:
        term_files = [f"{k}_terms.npz" for k in TERMS]
        for k in TERMS:
            save_npz_atomic(os.path.join(out_dir, f"{k}_terms.npz"), sums[k] / num)
    summary = {
        "bpd": float(total.mean()),
        "bpd_stderr": float(total.std(ddof=1) / math.sqrt(num)) if num > 1 else None,
        "prior_bpd": float(prior.mean()),
        "num_images": int(num),
        "steps": int(diffusion_steps),
        "estimator": "stratified" if stratified else "exact",
        "terms_per_image": int(steps),
        "checkpoint_sha256": sha,
        "settings": job.flags(),
        "torch": torch.__version__,
    }
    write_text_atomic(os.path.join(out_dir, "bpd.json"), json.dumps(summary, indent=1, sort_keys=True) + "\n")
    sample_parts.remove_parts(parts_dir)
    stderr = f" +- {summary['bpd_stderr']:.6f}" if summary["bpd_stderr"] is not None else ""
    how = (f"stratified estimate: {steps} of {diffusion_steps} VB terms per image" if stratified
           else f"{steps} VB terms")
    print(f"bits/dim {summary['bpd']:.6f}{stderr} over {num} images ({how} + prior "
          f"{summary['prior_bpd']:.6f})", flush=True)
    for name in [OUT_NAME] + term_files + ["bpd.json"]:
        print(f"wrote {os.path.join(out_dir, name)}", flush=True)
    return summary


def read_bpd(out_dir):
    """(summary dict, bpd.npz arrays) of a finished run."""
    with open(os.path.join(out_dir, "bpd.json")) as f:
        summary = json.load(f)
    with np.load(os.path.join(out_dir, OUT_NAME)) as z:
        arrays = {k: z[k] for k in z.files}
    return summary, arrays

