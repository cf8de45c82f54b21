"""Time grids fitted to a model's own trajectories (GITS: Chen et al., ICML 2024, arXiv 2405.11326).

Recipe (``docs/grids.md``), for a checkpoint and a fine grid g_0 > g_1 > ... > g_{M-1} (original
timesteps; node M = clean data, alpha_bar 1):

1. Teacher: B trajectories (samples 0..B-1 of ``--seed``: the same per-sample noise x_T as the
   sampling scripts, :class:`~guided_diffusion.sampler.generate.SampleNoise`) are run with an
   accurate deterministic solver on the fine grid; kept are the states X[b, m] (m = 0..M, X[:, M]
   the final sample) and the network's clipped x0 prediction P[b, m] at every fine time (m < M),
   from which eps_m = (X_m - sqrt(a_m) P_m) / sqrt(1 - a_m).
2. Cost of one step of ``--grid_solver`` from node i to node j > i, with no network call (it
   reuses the recorded prediction at i):
       C[i, j] = mean_b RMS(step(X[b, i], eps_i, P_i; a_i -> a_j) - X[b, j]),
   RMS over the C*H*W values of a sample (the root mean squared distance; GITS's L2 distance up
   to the constant sqrt(CHW), so the same argmin).
3. For every K: the cheapest path 0 = n_0 < ... < n_K = M by dynamic programming
   (:func:`guided_diffusion.sampler.grids.best_path`); the grid is g_{n_0}, ..., g_{n_{K-1}}
   (K network evaluations with a one-step solver; it always starts at the fine grid's top).

Caching and resuming: the teacher is kept under ``OUT_DIR/teacher-<checkpoint sha256[:12]>-<settings
hash>/`` in one npz per batch of trajectories (``part-<start>-<end>.npz``), plus the summed cost
matrix ``cost-<solver>.npz`` once complete; a rerun with the same checkpoint and teacher settings
reuses them (only the missing batches are run). SIGTERM / SIGINT stop after the batch in flight with
the resume command. Memory: one batch of states (batch x (M+1) x C x H x W float32, twice).
"""

import hashlib
import json
import os
import time

import numpy as np
import torch

from ..io_util import save_npz_atomic, sha256_file, write_text_atomic
from ..sampler import grids
from ..sampler.generate import LABEL_STREAM, SampleNoise
from ..sampler.loop import Sampler, sample_loop_progressive
from ..sampler.solvers import eps_from_x0, get_solver
from ..script_util import diffusion_from_config
from . import control
from .sample import build_model

DISTANCE = "rms"


def _say(text):
    print(text, flush=True)


def teacher_key(job, cfg, checkpoint_sha256, fine_timesteps):
    """The settings that decide the teacher's numbers, and a short hash of them (cache folder name)."""
    pixel = {k: v for k, v in job.pixel_settings().items()
             if k not in ("timestep_respacing", "solver", "use_ddim", "eta", "do_time_shift", "window", "cutoff",
                          "ts_rule", "eps_scale", "eps_scale_k", "dcw_low", "dcw_high", "save_trace")}
    key = {"checkpoint_sha256": checkpoint_sha256, "fine_timesteps": list(fine_timesteps),
           "teacher_solver": cfg.teacher_solver, "seed": int(job.sampler.seed), "model_and_diffusion": pixel}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return key, digest


def run_teacher_batch(model, diffusion, sampler, indices, *, shape, seed, num_classes=None):
    """States and predictions of one batch of teacher trajectories.

    :param indices: (b,) int64 global sample indices.
    :return: (X (b, M+1, C, H, W) float32: the state at each fine time then the final sample,
        P (b, M, C, H, W) float32: the clipped x0 prediction at each fine time), CPU numpy.
    """
    noise = SampleNoise(seed)
    x = noise.normal(indices, 0, shape)
    kwargs = {}
    if num_classes:
        kwargs["y"] = noise.integers(indices, LABEL_STREAM, num_classes)
    states, preds = [x], []
    for out in sample_loop_progressive(diffusion, model, x.shape, sampler, noise=x, model_kwargs=kwargs):
        preds.append(out["pred_xstart"])
        states.append(out["sample"])
    xs = torch.stack(states, 1)
    if not bool(torch.isfinite(xs).all()):
        raise ValueError(f"a teacher trajectory (samples {int(indices[0])}..{int(indices[-1])}) is not finite: "
                         f"try another --teacher_solver or --fine_grid")
    return xs.float().numpy(), torch.stack(preds, 1).float().numpy()


def step_costs(states, preds, alphas, solver_name):
    """Summed (over samples) RMS distance of one solver step i -> j to the teacher's state at j.

    :param states: (b, M+1, C, H, W) teacher states (node M = final sample).
    :param preds: (b, M, C, H, W) clipped x0 predictions at nodes 0..M-1.
    :param alphas: (M+1,) float64 alpha_bar of the nodes (node M: 1.0, clean).
    :param solver_name: a registry solver; its first step (fresh history) is used.
    :return: (M+1, M+1) float64, zero on and below the diagonal.
    """
    solver = get_solver(solver_name)
    if solver.extra_evals(solver.init_state()) != 0:
        raise ValueError(f"--grid_solver {solver_name}: needs extra network calls per step; use a one-step solver")
    x_all = torch.from_numpy(states).double()
    p_all = torch.from_numpy(preds).double()
    m = p_all.shape[1]
    out = np.zeros((m + 1, m + 1))
    for i in range(m):
        x, x0 = x_all[:, i], p_all[:, i]
        a = torch.tensor(float(alphas[i]), dtype=torch.float64)
        eps = eps_from_x0(x, x0, a)
        for j in range(i + 1, m + 1):
            a_next = torch.tensor(float(alphas[j]), dtype=torch.float64)
            pred, _ = solver.step(solver.init_state(), x, eps, x0, a, a_next, is_last=j == m, num_steps=1)
            d = (pred - x_all[:, j]).reshape(x.shape[0], -1).square().mean(1).sqrt()
            out[i, j] = float(d.sum())
    return out


def optimize_grids(job, cfg, device="cpu", progress=True):
    """Fit one grid file per K of ``cfg.grid_steps`` (see the module docstring); returns the written paths.

    :param job: a :class:`~guided_diffusion.jobs.sample.SamplingJob` (model, diffusion, seed,
        clip_denoised, batch_size, out_dir, model_path, overwrite).
    :param cfg: a :class:`~guided_diffusion.settings.GridOptConfig`.
    """
    run = job.run
    if not run.model_path or not os.path.isfile(run.model_path):
        raise ValueError(f"--model_path {run.model_path or '(empty)'}: no such file")
    ks = [int(k) for k in cfg.grid_steps.split(",")]
    fine_job = job.with_flags(timestep_respacing=cfg.fine_grid)
    diffusion = diffusion_from_config(fine_job.diffusion)
    fine = [int(t) for t in reversed(diffusion.timestep_map)]
    m = len(fine)
    if max(ks) > m:
        raise ValueError(f"--grid_steps {max(ks)} exceeds the {m} timesteps of --fine_grid {cfg.fine_grid}: use a finer grid")
    if fine[0] < diffusion.original_num_steps // 2:
        raise ValueError(f"--fine_grid {cfg.fine_grid} starts at t = {fine[0]}: the teacher must start from noise "
                         f"near T - 1 = {diffusion.original_num_steps - 1}")
    sha = sha256_file(run.model_path)
    key, digest = teacher_key(job, cfg, sha, fine)
    cache = os.path.join(run.out_dir, f"teacher-{sha[:12]}-{digest}")
    os.makedirs(cache, exist_ok=True)
    write_text_atomic(os.path.join(cache, "teacher.json"), json.dumps(key, indent=1, default=str) + "\n")
    alphas = np.append(np.asarray(diffusion.base_alphas_cumprod, dtype=np.float64)[fine], 1.0)

    b_total, bs = int(cfg.num_trajectories), int(run.batch_size)
    ranges = [(s, min(s + bs, b_total)) for s in range(0, b_total, bs)]
    part_path = lambda r: os.path.join(cache, f"part-{r[0]:06d}-{r[1]:06d}.npz")  # noqa: E731
    if run.overwrite:
        for name in os.listdir(cache):
            if name.startswith(("part-", "cost-")):
                os.remove(os.path.join(cache, name))
    todo = [r for r in ranges if not os.path.isfile(part_path(r))]
    cost_path = os.path.join(cache, f"cost-{cfg.grid_solver}-{b_total}-{bs}.npz")
    if todo or not os.path.isfile(cost_path):
        if todo:
            model = build_model(job, device)
            sampler = Sampler(kind=cfg.teacher_solver, clip_denoised=bool(job.sampler.clip_denoised))
            shape = (job.model.image_channels, job.model.image_size, job.model.image_size)
            _say(f"teacher: {sum(e - s for s, e in todo)} of {b_total} trajectories to run, "
                 f"{cfg.teacher_solver} on {cfg.fine_grid} ({m} steps from t = {fine[0]}), cache {cache}")
        t0, done = time.time(), 0
        with control.StopSignals(what="stopping after this batch of teacher trajectories") as signals:
            for r in todo:
                idx = torch.arange(r[0], r[1], dtype=torch.long, device=device)
                with torch.no_grad():
                    xs, ps = run_teacher_batch(model, diffusion, sampler, idx, shape=shape, seed=job.sampler.seed,
                                               num_classes=model.num_classes)
                save_npz_atomic(part_path(r), states=xs, preds=ps)
                done += r[1] - r[0]
                if progress:
                    el = time.time() - t0
                    left = el / done * (sum(e - s for s, e in todo) - done)
                    _say(f"teacher: {done}/{sum(e - s for s, e in todo)} trajectories, {el:.0f} s, about {left:.0f} s left")
                signum = control.stop_requested_anywhere(signals)
                if signum is not None and r is not todo[-1]:
                    control.preempt(signum, f"stopped after {done} teacher trajectories (kept in {cache}); "
                                            f"resume with: {control.resume_command()}")
        t1, cost = time.time(), np.zeros((m + 1, m + 1))
        for n, r in enumerate(ranges):
            with np.load(part_path(r)) as z:
                cost += step_costs(z["states"], z["preds"], alphas, cfg.grid_solver)
            if progress:
                el = time.time() - t1
                _say(f"cost: {n + 1}/{len(ranges)} parts, {el:.0f} s, about {el / (n + 1) * (len(ranges) - n - 1):.0f} s left")
        save_npz_atomic(cost_path, cost=cost / b_total)
    with np.load(cost_path) as z:
        cost = z["cost"]

    paths = []
    for k in ks:
        nodes, total = grids.best_path(cost, k)
        uniform = np.round(np.linspace(0, m, k + 1)).astype(int)
        doc = grids.grid_document(
            [fine[n] for n in nodes[:-1]], num_timesteps=diffusion.original_num_steps, checkpoint_sha256=sha,
            solver=cfg.grid_solver, steps=k, cost=total,
            cost_uniform_in_fine_grid=float(sum(cost[a, b] for a, b in zip(uniform, uniform[1:]))),
            distance=f"{DISTANCE}: mean over trajectories of the root mean squared difference per sample",
            fine_grid=cfg.fine_grid, fine_timesteps=fine,
            teacher={"solver": cfg.teacher_solver, "num_trajectories": b_total, "seed": int(job.sampler.seed),
                     "clip_denoised": bool(job.sampler.clip_denoised)})
        path = os.path.join(run.out_dir, f"grid_{cfg.grid_solver}_{k}.json")
        write_text_atomic(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")
        _say(f"{k} steps: {', '.join(map(str, doc['timesteps']))} (cost {total:.4f}; "
             f"uniform in the fine grid {doc['cost_uniform_in_fine_grid']:.4f}) -> {path}; "
             f"sample with --timestep_respacing file:{path}")
        paths.append(path)
    return paths
