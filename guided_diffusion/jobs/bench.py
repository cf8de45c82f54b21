"""A bench: step counts x samplers (x grids), plus search cells, sampled, scored and reported.

``scripts/fid_table.py`` is the command; this module is the library. A bench is a list of
:class:`BenchCell` (a :class:`~guided_diffusion.jobs.cells.Cell` with its place in the table). The
three phases:

* sample: each cell's npz under ``TABLE_DIR/cells/<key>/`` (resumable, several processes under mpiexec);
* evaluate: each cell's FID / KID through the shared :class:`~guided_diffusion.jobs.cells.ScoreCache`
  (``--cache_dir``; a score already there, e.g. from the tuner, is not computed again), also written
  to ``TABLE_DIR/results.json``;
* report: ``table.md`` and ``fid_vs_nfe.png`` (:mod:`guided_diffusion.jobs.report`) from the cache
  alone (no sampling, no evaluation), or from ``results.json`` when no reference is given.

Sampler names: ``[ts-]SOLVER[-RULE][-quad]`` (:func:`parse_sampler`).
The grid of a main-table cell is ``quadN`` for "-quad" names, else ``--respacing``'s, or each
template of ``--grids`` (any ``--timestep_respacing`` string, N standing for the step count).
"""

import json
import os
import re
import time
from dataclasses import dataclass

from ..io_util import write_text_atomic
from ..settings import SOLVER_NAMES, format_number
from ..demo import DEMO_TS_PRESETS, is_demo_path
from .cells import Cell, ScoreCache, grid_for, grid_template, job_nfe

# Window and cutoff per step count: Figure 7 of the TS-DPM paper (40/30/8/2 at 10/20/50/100 steps, cutoff
# 300) and window 80, cutoff 300 at 5 steps (its ADM code's README example).
# "demo": the bundled demo model's measured best (guided_diffusion/demo.py, the one table of them).
PRESETS = {
    "paper": {5: (80, 300), 10: (40, 300), 20: (30, 300), 50: (8, 300), 100: (2, 300)},
    "demo": dict(DEMO_TS_PRESETS),
}
CORRECTION_KEYS = ("eps_scale", "eps_scale_k", "dcw_low", "dcw_high")
RESPACINGS = {"ddim": "ddimN", "uniform": "N", "pndm": "pndmN"}
SOLVER_LABELS = {"ddim": "DDIM", "ddpm": "DDPM", "dpm++2m": "DPM-Solver++(2M)", "ipndm": "iPNDM",
                 "s-pndm": "S-PNDM", "f-pndm": "F-PNDM"}


def parse_sampler(name):
    """ "ts-ddim-pndm" -> dict(solver="ddim", ts=True, rule="pndm", quad=False); ValueError if not a name.

    Names: ``[ts-]SOLVER[-RULE][-quad]``; "ts-" turns the time shift on with RULE (default adm),
    "-quad" uses the quadratic grid ``quadN``.
    """
    from ..sampler.time_shift import TS_RULES

    rest, ts, quad, rule = name, False, False, "adm"
    if rest.startswith("ts-"):
        ts, rest = True, rest[3:]
    if rest.endswith("-quad"):
        quad, rest = True, rest[: -len("-quad")]
    if rest not in SOLVER_NAMES and ts:
        for r in sorted(TS_RULES, key=len, reverse=True):
            if rest.endswith("-" + r) and rest[: -len(r) - 1] in SOLVER_NAMES:
                rule, rest = r, rest[: -len(r) - 1]
                break
    if rest not in SOLVER_NAMES:
        raise ValueError(f"unknown sampler {name!r}: expected [ts-]SOLVER[-RULE][-quad] with SOLVER in "
                         f"{', '.join(SOLVER_NAMES)} and RULE in {', '.join(TS_RULES)} (e.g. ts-ddim, ts-dpm++2m)")
    return dict(solver=rest, ts=ts, rule=rule, quad=quad)


def sampler_label(name):
    p = parse_sampler(name)
    label = ("TS-" if p["ts"] else "") + SOLVER_LABELS[p["solver"]]
    if p["quad"]:
        label += " quad"
    if p["ts"]:
        label += f" ({p['rule']} rule)"
    return label




@dataclass(frozen=True)
class BenchCell:
    """A cell and its place in the table: row (sampler name and grid template), column (steps), NFE."""

    cell: Cell
    sampler: str  # the row's sampler name, [ts-]SOLVER[-RULE][-quad]
    steps: int  # the nominal step count (the column)
    nfe: int
    key: str  # folder name under cells/ and key of results.json
    main: bool = True  # main table (else a search cell)
    template: str = ""  # the grid template given with --grids or grid= ("": the sampler's own / --respacing)

    @property
    def row(self):
        return (self.sampler, self.template)

    @property
    def grid_kind(self):
        return grid_template(self.cell.grid, self.steps)


def split_grids(text):
    """ "ddimN,trailingN,t:999,500,0" -> ["ddimN", "trailingN", "t:999,500,0"]: a comma starts a new grid only
    when a letter follows it (so explicit timestep lists keep their commas)."""
    return [g.strip() for g in re.split(r",(?=\s*[A-Za-z])", text or "") if g.strip()]


def parse_ts_settings(text):
    """ "5:80:300,10:40:300,10:4:300:grid=trailingN:sampler=ts-ddim" ->
    {5: (80, 300), 10: (40, 300), (10, "trailingN", "ts-ddim"): (4, 300)}.

    An item may name the ``--grids`` template (``grid=``, as written there) and the sampler
    (``sampler=``) it is for; :func:`ts_setting` takes the most specific item that fits a cell.
    Templates hold commas only inside explicit ``t:`` lists, which this syntax does not take.
    """
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        usage = f"--ts_settings item {item!r}: expected STEPS:WINDOW:CUTOFF[:grid=TEMPLATE][:sampler=NAME]"
        head, *rest = re.split(r":(?=(?:grid|sampler)=)", item)  # a template may hold ":" (file:..., karrasN:7)
        plain, quals = head.split(":"), {}
        for q in rest:
            key, eq, value = q.partition("=")
            if key not in ("grid", "sampler") or not eq or not value:
                raise ValueError(usage)
            quals[key] = value
        try:
            steps, window, cutoff = (int(v) for v in plain)
        except ValueError:
            raise ValueError(usage) from None
        if "sampler" in quals:
            parse_sampler(quals["sampler"])
        key = steps if not quals else (steps, quals.get("grid"), quals.get("sampler"))
        out[key] = (window, cutoff)
    return out


def ts_setting(settings, steps, template="", sampler=""):
    """(window, cutoff) for a cell: the :func:`parse_ts_settings` item naming its grid template and
    sampler, else its grid, else its sampler, else the step count's; None when there is none."""
    for key in ((steps, template, sampler), (steps, template, None), (steps, None, sampler), steps):
        if key in settings:
            return settings[key]
    return None


def parse_extra_cells(text):
    """ "ts-ddim:10:20:300,ddim:10:eps_scale=1.004,ddim:10:grid=trailing10" ->
    [dict(sampler, steps, window, cutoff, corrections, grid)] (window/cutoff None when not given)."""
    cells = []
    for item in filter(None, (s.strip() for s in re.split(r",(?=\s*[A-Za-z])", text))):
        usage = f"--extra_cells item {item!r}: expected SAMPLER:STEPS[:WINDOW:CUTOFF][:key=value...]"
        head, grid = item, ""
        if ":grid=" in item:
            head, grid = item.split(":grid=", 1)
        parts = head.split(":")
        plain = [p for p in parts if "=" not in p]
        pairs = [p for p in parts if "=" in p]
        if len(plain) not in (2, 4):
            raise ValueError(usage)
        parse_sampler(plain[0])
        try:
            steps = int(plain[1])
            window, cutoff = (int(plain[2]), int(plain[3])) if len(plain) == 4 else (None, None)
        except ValueError:
            raise ValueError(usage) from None
        corrections = {}
        for pair in pairs:
            key, value = pair.split("=", 1)
            if key not in CORRECTION_KEYS:
                raise ValueError(f"--extra_cells item {item!r}: unknown key {key!r}; use "
                                 f"{', '.join(CORRECTION_KEYS + ('grid',))}")
            try:
                corrections[key] = float(value)
            except ValueError:
                raise ValueError(f"--extra_cells item {item!r}: {key} needs a number, got {value!r}") from None
        cells.append(dict(sampler=plain[0], steps=steps, window=window, cutoff=cutoff, corrections=corrections,
                          grid=grid))
    return cells


def _slug(text):
    return "".join(c if c.isalnum() or c in "+-." else "-" for c in text)


def cell_key(sampler, steps, cell, template=""):
    """``ts-ddim_10_w40_c300[_eps_scale1.004][_g<template>]``: the cell's folder and results key."""
    key = f"{sampler}_{steps}"
    if cell.has_ts:
        key += f"_w{cell.window}_c{cell.cutoff}"
    for k in CORRECTION_KEYS:
        if getattr(cell, k) != Cell.__dataclass_fields__[k].default:
            key += f"_{k}{format_number(getattr(cell, k))}"
    if template:
        key += f"_g{_slug(template)}"
    return key


def make_cell(sampler, steps, window, cutoff, corrections, template, respacing):
    """The typed cell of a bench entry: the sampler name's solver and shift, the grid at ``steps``."""
    p = parse_sampler(sampler)
    grid = grid_for(template or ("quadN" if p["quad"] else RESPACINGS.get(respacing, respacing)), steps)
    return Cell(solver=p["solver"], grid=grid, steps=steps, window=window if p["ts"] else 0,
                cutoff=cutoff if p["ts"] else 0, rule=p["rule"] if p["ts"] else "", **corrections)


def plan(args, base_job):
    """The bench's cells: main table (samplers x grids x steps) then search cells, no repeats.

    ``args``: ``steps``, ``samplers``, ``grids``, ``respacing``, ``preset``, ``ts_settings``, ``extra_cells``.
    """
    preset = args.preset or ("demo" if is_demo_path(base_job.run.model_path) else "paper")
    settings = dict(PRESETS[preset])
    settings.update(parse_ts_settings(args.ts_settings))
    steps_list = [int(s) for s in args.steps.split(",") if s.strip()]
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    for s in samplers:
        parse_sampler(s)
    templates = split_grids(getattr(args, "grids", "")) or [""]
    missing = sorted({s for s in steps_list for t in templates for v in samplers
                      if parse_sampler(v)["ts"] and ts_setting(settings, s, t, v) is None})
    if missing:
        raise ValueError(f"no window/cutoff for steps {missing}: add them with --ts_settings STEPS:WINDOW:CUTOFF")
    todo = []
    for sampler in samplers:
        for template in templates:
            for steps in steps_list:
                window, cutoff = ts_setting(settings, steps, template, sampler) or (0, 0)
                todo.append((sampler, steps, window, cutoff, {}, template, True))
    for c in parse_extra_cells(args.extra_cells):
        if c["window"] is None:
            if parse_sampler(c["sampler"])["ts"] and c["steps"] not in settings:
                raise ValueError(f"--extra_cells: no window/cutoff for {c['sampler']} at {c['steps']} steps; "
                                 "give SAMPLER:STEPS:WINDOW:CUTOFF")
            c["window"], c["cutoff"] = settings.get(c["steps"], (0, 0))
        todo.append((c["sampler"], c["steps"], c["window"], c["cutoff"], c["corrections"], c["grid"], False))
    seen = {}
    for sampler, steps, window, cutoff, corrections, template, main in todo:
        cell = make_cell(sampler, steps, window, cutoff, corrections, template, args.respacing)
        key = cell_key(sampler, steps, cell, template)
        if key in seen:
            continue
        job = cell.job(base_job)
        try:
            nfe = job_nfe(job)
        except ValueError as e:
            raise ValueError(f"grid {cell.grid!r} of {key}: {e}") from None
        seen[key] = BenchCell(cell=cell, sampler=sampler, steps=steps, nfe=nfe, key=key, main=main,
                              template=template)
    return list(seen.values())


def cell_job(base_job, entry, table_dir):
    """The sampling job of one bench cell: the user's model and run settings plus the cell's settings."""
    return entry.cell.job(base_job, out_dir=os.path.join(table_dir, "cells", entry.key), data_type="table",
                          model_type=entry.sampler, grid="", compare_grid="")


def cell_npz(entry, table_dir):
    folder = os.path.join(table_dir, "cells", entry.key)
    names = [f for f in os.listdir(folder) if f.endswith(".npz") and not f.endswith("_trace.npz")] \
        if os.path.isdir(folder) else []
    return os.path.join(folder, names[0]) if len(names) == 1 else None


def result_entry(entry, result):
    """The results.json record of a scored cell."""
    c = entry.cell
    corrections = {k: getattr(c, k) for k in CORRECTION_KEYS if getattr(c, k) != Cell.__dataclass_fields__[k].default}
    return dict(sampler=entry.sampler, steps=entry.steps, grid=c.grid, window=c.window, cutoff=c.cutoff,
                corrections=corrections, nfe=entry.nfe, fid=result["fid"], fid_sd=result.get("fid_sd"),
                kid_mean=result.get("kid_mean"), kid_se=result.get("kid_se"), kid_std=result.get("kid_std"),
                num_samples=result["num_samples"])


def load_results(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def save_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def eta(done, total, started):
    if not done or total <= done:
        return ""
    left = (time.time() - started) / done * (total - done)
    return f"; about {left / 60:.1f} min left for the {total - done} remaining"


def evaluate_cells(entries, base_job, table_dir, cache, log=print):
    """Score every sampled cell through ``cache`` (whole step-count columns first, main table before the
    search cells); returns {key: results.json record}, also written to ``TABLE_DIR/results.json``."""
    path = os.path.join(table_dir, "results.json")
    results = load_results(path)
    todo = [e for e in sorted(entries, key=lambda e: (not e.main, e.steps)) if cell_npz(e, table_dir) is not None]
    started, made = time.time(), 0
    for n, e in enumerate(todo):
        job = cell_job(base_job, e, table_dir)
        result, cached = cache.score(job, label=e.key, npz=cell_npz(e, table_dir))
        results[e.key] = result_entry(e, result)
        save_json_atomic(path, results)
        if not cached:
            made += 1
            log(f"{e.key}: FID {result['fid']:.3f} (evaluated {n + 1}/{len(todo)}{eta(made, len(todo), started)})")
    return results


def cached_results(entries, base_job, table_dir, cache):
    """{key: results.json record} of the cells whose scores are in ``cache`` (nothing is sampled or scored)."""
    out = {}
    for e in entries:
        result = cache.get(cell_job(base_job, e, table_dir))
        if result is not None:
            out[e.key] = result_entry(e, result)
    return out


def open_cache(args, base_job):
    """The bench's :class:`ScoreCache`: ``--cache_dir`` (default ``TABLE_DIR/cache``)."""
    from ..settings import EvalConfig, configs_from_args

    eval_config = configs_from_args(args, EvalConfig)[0]
    eval_config.validate()
    return ScoreCache(args.cache_dir or os.path.join(args.table_dir, "cache"), base_job.run.model_path,
                      args.ref_batch, eval_config, log=lambda text: None)


def import_earlier_cells(entries, base_job, table_dir, cache, earlier_dirs, log=print):
    """Adopt the samples and scores of earlier table folders (``earlier_dirs``) for this bench's cells.

    An earlier cell is adopted only when its run metadata (the json beside its npz) names the same
    checkpoint SHA-256, every pixel setting of the new cell's job equal, and the same sample count:
    then its npz is the npz this bench would write (image k depends only on the settings, the seed
    and k). The npz is linked (or copied) into ``TABLE_DIR/cells/KEY/``, and its earlier score, when
    its results.json has one and ``cache`` is given, is put in the score cache: it was computed by the
    same evaluator with the options this cache keys on (checked: the earlier scores were made with
    the evaluator's defaults of :class:`~guided_diffusion.settings.EvalConfig`, so ``cache`` must use
    them). Returns the number of cells adopted.
    """
    import glob
    import shutil

    from ..script_util import diffusion_from_config
    from ..settings import EvalConfig

    if cache is not None and cache.eval_config.key() != EvalConfig().key():
        raise ValueError("--import_from: earlier scores were made with the evaluator's default options; "
                         "drop the evaluation flags that change them")
    earlier = []
    for folder in earlier_dirs:
        if not os.path.isdir(os.path.join(folder, "cells")):
            raise ValueError(f"--import_from {folder}: not a table folder (no cells/ inside)")
        results = load_results(os.path.join(folder, "results.json"))
        for meta_path in glob.glob(os.path.join(folder, "cells", "*", "*.json")):
            if meta_path.endswith("_trace.json"):
                continue
            with open(meta_path) as f:
                meta = json.load(f)
            npz = os.path.join(os.path.dirname(meta_path), meta.get("npz", ""))
            key = os.path.basename(os.path.dirname(meta_path))
            if os.path.isfile(npz):
                earlier.append((meta, npz, results.get(key)))
    adopted = 0
    for e in entries:
        job = cell_job(base_job, e, table_dir)
        have_npz = cell_npz(e, table_dir) is not None
        if have_npz and (cache is None or cache.get(job) is not None):
            continue
        pixel = job.pixel_settings()
        if not pixel.get("do_time_shift"):  # the shift's settings change no pixel while it is off
            pixel = {k: v for k, v in pixel.items() if k not in ("window", "cutoff", "ts_rule")}
        timesteps = sorted(int(t) for t in diffusion_from_config(job.diffusion).timestep_map)
        for meta, npz, record in earlier:
            settings = meta.get("settings", {})
            if (meta.get("checkpoint_sha256") != (cache.checkpoint_sha256 if cache else meta.get("checkpoint_sha256"))
                    or int(meta.get("num_samples", -1)) != job.run.num_samples
                    or sorted(meta.get("timesteps", [])) != timesteps  # the grid by its timesteps, not its name
                    or any(settings.get(k) != v for k, v in pixel.items() if k != "timestep_respacing")):
                continue
            out_dir = os.path.join(table_dir, "cells", e.key)
            os.makedirs(out_dir, exist_ok=True)
            for src in () if have_npz else (npz, npz[: -len(".npz")] + ".json"):
                dst = os.path.join(out_dir, os.path.basename(src))
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copyfile(src, dst)
            if cache is not None and record is not None and cache.get(job) is None:
                result = {"fid": record["fid"], "fid_sd": record.get("fid_sd"), "kid_mean": record.get("kid_mean"),
                          "kid_se": record.get("kid_se"), "kid_std": record.get("kid_std"),
                          "num_samples": record["num_samples"]}
                cache.put(job, result, label=e.key, npz=npz, imported_from=os.path.dirname(npz))
            log(f"{e.key}: adopted {npz}" + (" and its score" if record is not None else ""))
            adopted += 1
            break
    return adopted
