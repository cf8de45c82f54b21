"""The experiment layer under the bench and the tuner: a typed cell and one cache of its scores.

A :class:`Cell` is one sampler setting: solver, time grid (a ``--timestep_respacing`` string), time
shift (window, cutoff, rule; window 0 = off), corrections (epsilon scaling, DCW), seed and sample
count. Fields left at ``""`` / ``None`` take the base job's value, so a cell is a change to a
:class:`~guided_diffusion.jobs.sample.SamplingJob` (:meth:`Cell.job`), never a second set of flags.

:class:`ScoreCache` holds the scores (FID with its bootstrap sd, KID with its standard error) of
sample sets, one JSON file per evaluation under ``cache_dir/<checkpoint SHA-256>/evals/<key hash>.json``,
the key being the checkpoint's SHA-256, the reference file's SHA-256, every pixel-affecting sampling
setting, the sample count and the evaluation options (:func:`cache_key`). ``scripts/fid_table.py``
and ``scripts/tune_sampler.py`` both read and write it, so a cell the tuner scored is not scored
again by a bench that uses the same ``--cache_dir``.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

from .. import diffusers_model, io_util
from ..io_util import npz_content_sha256, sha256_file, write_text_atomic
from ..sampler.solvers import nfe
from ..settings import SOLVER_NAMES, EvalConfig, TimeShiftConfig, format_number

CACHE_VERSION = 2  # 2: the reference is identified by its arrays (npz_content_sha256), not its file bytes
FAMILIES = ("ts", "es", "dcw")
_TS_DEFAULTS = TimeShiftConfig()


def _log(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# ------------------------------------------------------------------ the cell
@dataclass(frozen=True)
class Cell:
    """One sampler setting. Window 0 means no time shift; eps_scale 1 and dcw 0 mean off.

    ``solver`` (one of :data:`~guided_diffusion.settings.SOLVER_NAMES`), ``grid`` (any
    ``--timestep_respacing`` string: ``ddim10``, ``quad10``, ``10``, and whatever else the respacing
    parser accepts), ``seed`` and ``num_samples``: ``""`` / ``None`` keep the base job's. ``steps`` is
    the nominal step count the cell stands for in a table (0: not given); it sets no flag.
    """

    solver: str = ""
    grid: str = ""
    steps: int = 0
    window: int = 0
    cutoff: int = 0
    rule: str = ""
    eps_scale: float = 1.0
    eps_scale_k: float = 0.0
    dcw_low: float = 0.0
    dcw_high: float = 0.0
    seed: Optional[int] = None
    num_samples: Optional[int] = None

    def __post_init__(self):
        if self.window == 0:  # no shift: cutoff and rule mean nothing, so they are not part of the setting
            object.__setattr__(self, "cutoff", 0)
            object.__setattr__(self, "rule", "")
        elif not self.rule:
            object.__setattr__(self, "rule", _TS_DEFAULTS.ts_rule)
        if self.solver and self.solver not in SOLVER_NAMES:
            raise ValueError(f"unknown solver {self.solver!r}; choose from {', '.join(SOLVER_NAMES)}")

    has_ts = property(lambda self: self.window > 0)
    has_es = property(lambda self: self.eps_scale != 1.0 or self.eps_scale_k != 0.0)
    has_dcw = property(lambda self: self.dcw_low != 0.0 or self.dcw_high != 0.0)
    has_base = property(lambda self: bool(self.solver or self.grid))

    @property
    def family(self):
        """"plain", "ts", "es", "dcw", "base" (only another grid or solver), or "combo" (two or more)."""
        parts = [f for f, on in zip(FAMILIES, (self.has_ts, self.has_es, self.has_dcw)) if on]
        if not parts:
            return "base" if self.has_base else "plain"
        return parts[0] if len(parts) == 1 else "combo"

    def plain(self):
        """The same solver, grid, seed and count with no shift and no corrections (a row's baseline)."""
        return Cell(solver=self.solver, grid=self.grid, steps=self.steps, seed=self.seed,
                    num_samples=self.num_samples)

    def flags(self):
        """The sampling flags this cell sets (a cell without a shift leaves the shift flags at their defaults)."""
        out = dict(do_time_shift=self.has_ts, eps_scale=float(self.eps_scale), eps_scale_k=float(self.eps_scale_k),
                   dcw_low=float(self.dcw_low), dcw_high=float(self.dcw_high))
        if self.has_ts:
            out.update(window=int(self.window), cutoff=int(self.cutoff), ts_rule=self.rule)
        else:
            out.update(window=_TS_DEFAULTS.window, cutoff=_TS_DEFAULTS.cutoff, ts_rule=_TS_DEFAULTS.ts_rule)
        if self.solver:  # DDIM and DDPM as upstream spells them (--use_ddim), so their outputs keep their names
            plain = self.solver in ("ddim", "ddpm")
            out.update(solver="" if plain else self.solver, use_ddim=self.solver != "ddpm")
        if self.grid:
            out["timestep_respacing"] = self.grid
        if self.seed is not None:
            out["seed"] = int(self.seed)
        if self.num_samples is not None:
            out["num_samples"] = int(self.num_samples)
        return out

    def job(self, base_job, **run_flags):
        """``base_job`` with this cell's settings (and ``run_flags``, e.g. out_dir) applied."""
        return base_job.with_flags(**self.flags(), **run_flags)

    def command_flags(self):
        """The flags to add to a sampling command for this cell (only those not at their defaults)."""
        out = []
        if self.solver:
            out += ["--solver", self.solver]
        if self.grid:
            out += ["--timestep_respacing", self.grid]
        if self.has_ts:
            out += ["--do_time_shift", "True", "--window", str(self.window), "--cutoff", str(self.cutoff)]
            if self.rule != _TS_DEFAULTS.ts_rule:
                out += ["--ts_rule", self.rule]
        for name, off in (("eps_scale", 1.0), ("eps_scale_k", 0.0), ("dcw_low", 0.0), ("dcw_high", 0.0)):
            if getattr(self, name) != off:
                out += [f"--{name}", format_number(getattr(self, name))]
        if self.seed is not None:
            out += ["--seed", str(self.seed)]
        return out

    def label(self):
        parts = [" ".join(p for p in (f"grid {self.grid}" if self.grid else "", self.solver) if p)] \
            if self.has_base else []
        if self.has_ts:
            parts.append(f"TS w{self.window} c{self.cutoff} {self.rule}")
        if self.eps_scale != 1.0:
            parts.append(f"ES {format_number(self.eps_scale)}")
        if self.eps_scale_k != 0.0:
            parts.append(f"ES k {format_number(self.eps_scale_k)}")
        if self.dcw_low != 0.0:
            parts.append(f"DCW {format_number(self.dcw_low)}")
        if self.dcw_high != 0.0:
            parts.append(f"DCW high {format_number(self.dcw_high)}")
        return " + ".join(parts) or "plain"

    def slug(self):
        """A file-name-safe short name."""
        parts = []
        if self.has_base:
            parts.append("".join(c if c.isalnum() or c in "+-." else "-" for c in f"{self.grid}{self.solver}"))
        if self.has_ts:
            parts.append(f"w{self.window}_c{self.cutoff}_{self.rule}")
        for name, short in (("eps_scale", "es"), ("eps_scale_k", "esk"), ("dcw_low", "dcw"), ("dcw_high", "dcwh")):
            if getattr(self, name) != Cell.__dataclass_fields__[name].default:
                parts.append(f"{short}{format_number(getattr(self, name))}")
        return "_".join(parts)[:80] or "plain"

    def as_dict(self):
        return dataclasses.asdict(self)

    def combined(self, other):
        """This cell with ``other``'s non-default parts added (this cell's solver and grid win when both set)."""
        pick = lambda name, on: getattr(other, name) if on else getattr(self, name)  # noqa: E731
        return Cell(
            solver=self.solver or other.solver, grid=self.grid or other.grid, steps=self.steps or other.steps,
            window=pick("window", other.has_ts), cutoff=pick("cutoff", other.has_ts), rule=pick("rule", other.has_ts),
            eps_scale=pick("eps_scale", other.has_es), eps_scale_k=pick("eps_scale_k", other.has_es),
            dcw_low=pick("dcw_low", other.has_dcw), dcw_high=pick("dcw_high", other.has_dcw),
            seed=self.seed if self.seed is not None else other.seed,
            num_samples=self.num_samples if self.num_samples is not None else other.num_samples,
        )


def job_steps(job):
    """The number of steps the job's grid really has (e.g. ``pndm10`` has 9)."""
    from ..script_util import diffusion_from_config

    return diffusion_from_config(job.diffusion).num_timesteps


def job_nfe(job):
    """Network evaluations per sample of ``job``: its solver's NFE on its grid (the ADM loop ends clean)."""
    return nfe(job.sampler.solver_name(), job_steps(job), ends_clean=True)


# ------------------------------------------------------------------ grid templates
def grid_for(template, steps):
    """A grid template at ``steps`` steps: ``ddimN`` -> ``ddim10``, ``karrasN:7`` -> ``karras10:7``,
    ``N`` -> ``10``; in ``file:PATH`` the placeholder is ``{N}`` (``file:grids/demo_{N}.json`` ->
    ``file:grids/demo_10.json``, one optimized grid file per step count); a string without a
    placeholder (``t:...``, ``ddim10``) is used as it is."""
    if template.startswith(("file:", "t:")):
        return template.replace("{N}", str(int(steps)))
    head, sep, tail = template.partition(":")
    if head.endswith("N"):
        return f"{head[:-1]}{int(steps)}{sep}{tail}"
    return template


def grid_template(grid, steps):
    """The inverse of :func:`grid_for` for display: ``ddim10`` at 10 steps -> ``ddimN``."""
    if not steps or grid.startswith(("file:", "t:")):
        return grid
    head, sep, tail = grid.partition(":")
    n = str(int(steps))
    if head.endswith(n) and not head[: -len(n)][-1:].isdigit():
        return f"{head[: -len(n)]}N{sep}{tail}"
    return grid


# ------------------------------------------------------------------ the score cache
def cache_key(checkpoint_sha256, reference_sha256, pixel_settings, num_samples, eval_config):
    """The dict that identifies one evaluation (everything its numbers depend on).

    ``reference_sha256``: the reference's :func:`~guided_diffusion.io_util.npz_content_sha256` (its
    arrays, so a statistics file made again from the same images keys the same).
    """
    return {
        "version": CACHE_VERSION,
        "checkpoint_sha256": checkpoint_sha256,
        "reference_content_sha256": reference_sha256,
        "pixel_settings": dict(sorted(pixel_settings.items())),
        "num_samples": int(num_samples),
        "evaluation": eval_config.key() if isinstance(eval_config, EvalConfig) else dict(eval_config),
    }


def key_hash(key):
    """SHA-256 of the key's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class ScoreCache:
    """Scores of sample sets of one checkpoint against one reference, cached on disk.

    ``checkpoint``: the model file; ``ref``: the reference npz (statistics of
    ``evaluations/evaluator.py --stats``, with ``pool_3`` features for KID, or images: their statistics
    are made once, under ``cache_dir/references/``). Layout: ``cache_dir/<checkpoint SHA-256>/evals/``
    (one JSON per evaluation) and ``.../samples/`` (sample folders of callers that keep them here).
    """

    def __init__(self, cache_dir, checkpoint, ref, eval_config=None, log=_log):
        if not checkpoint or not (io_util.isfile(checkpoint) or os.path.isdir(checkpoint)):
            raise ValueError(f"--model_path {checkpoint or '(empty)'}: no such file (no model flags at all select "
                             "the bundled demo model)")
        if not ref or not os.path.isfile(ref):
            raise ValueError(f"--ref_batch {ref or '(empty)'}: no such file; give the statistics file of "
                             "evaluations/evaluator.py --stats (with pool_3 features) or an image npz")
        self.cache_dir = cache_dir
        self.ref = ref
        self.eval_config = eval_config or EvalConfig()
        self.log = log
        self.checkpoint_sha256 = diffusers_model.model_sha256(checkpoint)  # a file, or a diffusers folder
        try:  # the arrays, so the same statistics made again key the same
            self.reference_sha256 = npz_content_sha256(ref)
        except (OSError, ValueError, EOFError):  # not a plain npz: its bytes (the evaluator says what is wrong)
            self.reference_sha256 = sha256_file(ref)
        self.root = os.path.join(cache_dir, self.checkpoint_sha256)
        self.evaluated = 0
        self.from_cache = 0
        self._net = None
        self._ref_for_eval = None

    # -- keys and entries
    def key(self, job):
        """The cache key of ``job``'s samples 0..num_samples-1 (its pixel settings and count)."""
        pixel = job.with_flags(save_trace=False).pixel_settings()
        return cache_key(self.checkpoint_sha256, self.reference_sha256, pixel, job.run.num_samples,
                         self.eval_config)

    def sample_dir(self, job, slug):
        """A folder under the cache for ``job``'s samples, shared by every sample count of the same settings."""
        pixel = job.with_flags(save_trace=False).pixel_settings()
        digest = key_hash({"checkpoint_sha256": self.checkpoint_sha256, "pixel_settings": pixel})
        return os.path.join(self.root, "samples", f"{slug}_{digest[:12]}")

    def entry_path(self, key):
        return os.path.join(self.root, "evals", key_hash(key) + ".json")

    def get(self, job):
        """The cached result of ``job``'s samples, or None."""
        key = self.key(job)
        path = self.entry_path(key)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                entry = json.load(f)
        except (OSError, ValueError) as e:
            self.log(f"warning: cache entry {path} is unreadable ({e}); evaluating again")
            return None
        if entry.get("key") != key:
            self.log(f"warning: cache entry {path} holds another key; evaluating again")
            return None
        return entry["result"]

    def put(self, job, result, **info):
        """Store ``result`` (fid, fid_sd, kid_mean, kid_se, kid_std, num_samples, ...) for ``job``'s samples,
        atomically, with ``info`` (label, npz, timings) beside it."""
        key = self.key(job)
        entry = dict(info, key=key, result=result, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
        path = self.entry_path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_text_atomic(path, json.dumps(entry, indent=1, sort_keys=True) + "\n")

    # -- the work
    def _device(self):
        from evaluations.evaluator import default_device

        return self.eval_config.eval_device or default_device()

    def _inception(self):
        if self._net is None:
            from evaluations.inception import load_inception

            self._net = load_inception(self.eval_config.inception_path, self._device())
        return self._net

    def reference(self):
        """The reference as the evaluator's batch, loaded once: mu, sigma and (when present) the pool_3
        features only, so no sFID is computed (two 2048-d eigendecompositions per evaluation, unused). An
        image npz gets its statistics made once, cached under ``cache_dir/references/``."""
        if self._ref_for_eval is None:
            from evaluations.evaluator import NpzBatch, compute_statistics_file, open_batch

            batch = open_batch(self.ref, "reference batch")
            if not batch.has_pool_features and batch.has_images:
                path = os.path.join(self.cache_dir, "references", self.reference_sha256 + ".npz")
                if not os.path.exists(path):
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    self.log(f"computing the reference statistics of {self.ref} once -> {path}")
                    compute_statistics_file(batch, path, self.eval_config.inception_path, self._device(),
                                            progress=False)
                batch = open_batch(path, "reference statistics")
            if batch.has_pool_stats:
                self._ref_for_eval = NpzBatch(batch.path, stats={k: batch.stats[k] for k in ("mu", "sigma")},
                                              pool_features=batch.pool_features, stats_num_images=batch.count)
            else:
                self._ref_for_eval = batch
        return self._ref_for_eval

    def score(self, job, label="", npz=None):
        """(result, was_cached): FID/KID of ``job``'s samples, sampled with ``run_sampling(job)`` unless
        ``npz`` (a file that holds them) is given. ``result``: fid, fid_sd, kid_mean, kid_se, kid_std
        (None when the reference has no features), num_samples, num_ref."""
        result = self.get(job)
        if result is not None:
            self.from_cache += 1
            return result, True
        from evaluations.evaluator import evaluate

        started = time.time()
        if npz is None:
            from .sample import run_sampling

            with contextlib.redirect_stdout(sys.stderr):  # run_sampling's "wrote ..." lines are progress
                npz = run_sampling(job)
        sampled = time.time() - started
        started = time.time()
        r = evaluate(self.reference(), npz, device=self._device(), progress=False, net=self._inception(),
                     **self.eval_config.evaluate_kwargs())
        scored = time.time() - started
        if r["num_sample_images"] != job.run.num_samples:  # never cache a score under another count's key
            raise ValueError(f"{npz} holds {r['num_sample_images']} samples, not --num_samples "
                             f"{job.run.num_samples}: remove {os.path.dirname(npz)} to sample it again")
        result = dict(kid_mean=r.get("kid_mean"), kid_se=r.get("kid_se"), kid_std=r.get("kid_std"), fid=r["fid"],
                      fid_sd=r.get("fid_bootstrap_sd"), num_samples=r["num_sample_images"], num_ref=r.get("num_ref"))
        self.put(job, result, label=label, npz=os.path.abspath(npz), sample_seconds=round(sampled, 3),
                 evaluate_seconds=round(scored, 3))
        self.evaluated += 1
        kid = f"KID x10^3 {1e3 * result['kid_mean']:.3f}, " if result["kid_mean"] is not None else ""
        self.log(f"evaluated {label or os.path.basename(npz)} at N={job.run.num_samples}: {kid}FID {result['fid']:.2f} "
                 f"(sampling {sampled:.1f} s, evaluation {scored:.1f} s)")
        return result, False
