"""Regenerate a FID table: a grid of step counts x samplers, sampled, evaluated, tabulated and plotted.

Paper Table 2 (CIFAR-10, ADM checkpoint, GPU; reference statistics from evaluations/evaluator.py --stats):

    mpiexec -n 8 python scripts/fid_table.py --model_path ADM.pt --image_size 32 --num_channels 128 \
        --num_head_channels 32 --num_res_blocks 3 --attention_resolutions 16,8 --resblock_updown True \
        --use_new_attention_order True --learn_sigma True --noise_schedule cosine \
        --use_scale_shift_norm True --ref_batch cifar10_train_stats.npz --table_dir runs/table2 \
        --num_samples 50000 --batch_size 512 --published cifar10_adm

With no --model_path and no model flags it uses the bundled demo model (Fashion-MNIST), as the
sampling scripts do. Every other flag of scripts/image_sample_1gpu.py (model, diffusion, --batch_size,
--num_samples, --seed, --eps_scale, ...) is accepted and applies to every cell.

Sampler names: [ts-]SOLVER[-RULE][-quad], SOLVER one of ddim, ddpm, dpm++2m, ipndm, s-pndm, f-pndm;
"ts-" turns the time shift on with RULE adm (default), pndm, adm-data or offset; "-quad" uses the
quadratic time grid (quadN) instead of --respacing. Examples: ddim, ts-ddim, ts-ddim-pndm, ddpm,
ts-ddpm-adm-data, dpm++2m, ts-dpm++2m, ipndm, f-pndm, ts-f-pndm, ddim-quad, ts-ddim-quad.

Phases (``--phase``): "sample" writes each cell's npz (resumable, multi-process under mpiexec),
"evaluate" computes FID (with a bootstrap sd), KID (with its standard error when the reference
statistics carry features) for each sampled cell, "report" writes ``table.md``, ``results.json``
and ``fid_vs_nfe.png``; "all" does the three. A rerun skips finished cells. Window and cutoff per
step count come from ``--preset`` (default "paper": Figure 7's windows 40/30/8/2 for 10/20/50/100
steps with cutoff 300, and the README's window 80, cutoff 300 at 5 steps) or ``--ts_settings``.
Extra cells (``--extra_cells``) add searches: SAMPLER:STEPS[:WINDOW:CUTOFF][:key=value...] with
keys eps_scale, eps_scale_k, dcw_low, dcw_high (e.g. ddim:10:eps_scale=1.004,
ts-ddim:10:20:300:dcw_low=0.02).
"""

import argparse
import json
import math
import os
import sys
import time

from guided_diffusion.io_util import save_figure_atomic, write_text_atomic
from guided_diffusion.cli import run_cli
from guided_diffusion.jobs.sample import parse_sampling_flags, run_sampling, sampling_parser
from guided_diffusion.settings import SOLVER_NAMES, format_number
from guided_diffusion.sampler.time_shift import TS_RULES

PRESETS = {
    "paper": {5: (80, 300), 10: (40, 300), 20: (30, 300), 50: (8, 300), 100: (2, 300)},
}
CORRECTION_KEYS = ("eps_scale", "eps_scale_k", "dcw_low", "dcw_high")
CORRECTION_DEFAULTS = {"eps_scale": 1.0, "eps_scale_k": 0.0, "dcw_low": 0.0, "dcw_high": 0.0}
SOLVER_LABELS = {"ddim": "DDIM", "ddpm": "DDPM", "dpm++2m": "DPM-Solver++(2M)", "ipndm": "iPNDM",
                 "s-pndm": "S-PNDM", "f-pndm": "F-PNDM"}
# Published FIDs (shared/docs/paper_tables.md): {set: {sampler: {steps: fid}}, "_note": text}.
PUBLISHED = {
    "cifar10_adm": {
        "_note": "TS-DPM paper Table 2: CIFAR-10, ADM backbone, DDIM uniform",
        "ddim": {5: 28.98, 10: 12.11, 20: 7.14, 50: 4.45},
        "ts-ddim": {5: 26.94, 10: 10.73, 20: 5.35, 50: 3.52},
    },
    "cifar10_ddpm_backbone": {
        "_note": "TS-DPM paper Table 1: CIFAR-10, DDPM 35.7M backbone (pytorch-fid), uniform skip unless -quad",
        "ddim": {5: 44.60, 10: 18.71, 20: 11.05, 50: 7.09, 100: 5.66},
        "ts-ddim": {5: 35.13, 10: 12.21, 20: 8.03, 50: 5.56, 100: 4.56},
        "ddpm": {5: 83.90, 10: 42.04, 20: 24.60, 50: 14.76, 100: 10.66},
        "ts-ddpm": {5: 67.06, 10: 33.36, 20: 22.21, 50: 13.64, 100: 9.69},
        "ddim-quad": {5: 41.57, 10: 13.70, 20: 6.91, 50: 4.71, 100: 4.23},
        "ts-ddim-quad": {5: 38.09, 10: 11.93, 20: 6.12, 50: 4.16, 100: 3.81},
        "s-pndm": {5: 22.53, 10: 9.49, 20: 5.37, 50: 3.74, 100: 3.71},
        "ts-s-pndm": {5: 18.81, 10: 5.14, 20: 4.42, 50: 3.71, 100: 3.60},
        "f-pndm": {5: 31.30, 10: 6.99, 20: 4.34, 50: 3.71, 100: 4.03},
        "ts-f-pndm": {5: 31.11, 10: 3.88, 20: 3.60, 50: 3.56, 100: 3.86},
    },
}


# ------------------------------------------------------------------ sampler names and cells
def parse_sampler(name):
    """ "ts-ddim-pndm" -> dict(solver="ddim", ts=True, rule="pndm", quad=False); ValueError if not a name."""
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


def solver_nfe(solver, steps):
    """Network evaluations of ``steps`` steps of ``solver`` (the S-/F-PNDM warm-up costs extra)."""
    from guided_diffusion.sampler.solvers import nfe

    return steps if solver in ("ddim", "ddpm") else nfe(solver, steps, ends_clean=True)


def parse_ts_settings(text):
    """ "5:80:300,10:40:300" -> {5: (80, 300), 10: (40, 300)}."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            steps, window, cutoff = (int(v) for v in item.split(":"))
        except ValueError:
            raise ValueError(f"--ts_settings item {item!r}: expected STEPS:WINDOW:CUTOFF") from None
        out[steps] = (window, cutoff)
    return out


def parse_extra_cells(text):
    """ "ts-ddim:10:20:300,ddim:10:eps_scale=1.004" -> [dict(sampler, steps, window, cutoff, corrections)]."""
    cells = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        usage = f"--extra_cells item {item!r}: expected SAMPLER:STEPS[:WINDOW:CUTOFF][:key=value...]"
        parts = item.split(":")
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
                raise ValueError(f"--extra_cells item {item!r}: unknown key {key!r}; use {', '.join(CORRECTION_KEYS)}")
            try:
                corrections[key] = float(value)
            except ValueError:
                raise ValueError(f"--extra_cells item {item!r}: {key} needs a number, got {value!r}") from None
        cells.append(dict(sampler=plain[0], steps=steps, window=window, cutoff=cutoff, corrections=corrections))
    return cells


def cell_key(cell):
    key = f"{cell['sampler']}_{cell['steps']}"
    if parse_sampler(cell["sampler"])["ts"]:
        key += f"_w{cell['window']}_c{cell['cutoff']}"
    for k in CORRECTION_KEYS:
        if k in cell["corrections"] and cell["corrections"][k] != CORRECTION_DEFAULTS[k]:
            key += f"_{k}{format_number(cell['corrections'][k])}"
    return key


def plan_cells(args):
    """Main-grid cells then extra (search) cells: dicts with sampler, steps, window, cutoff, corrections,
    key, grid (True for the main grid), nfe."""
    settings = dict(PRESETS[args.preset])
    settings.update(parse_ts_settings(args.ts_settings))
    steps_list = [int(s) for s in args.steps.split(",") if s.strip()]
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    for s in samplers:
        parse_sampler(s)
    missing = [s for s in steps_list if s not in settings]
    if missing and any(parse_sampler(s)["ts"] for s in samplers):
        raise ValueError(f"no window/cutoff for steps {missing}: add them with --ts_settings STEPS:WINDOW:CUTOFF")
    cells = []
    for sampler in samplers:
        for steps in steps_list:
            window, cutoff = settings.get(steps, (0, 0))
            cells.append(dict(sampler=sampler, steps=steps, window=window, cutoff=cutoff, corrections={}, grid=True))
    for cell in parse_extra_cells(args.extra_cells):
        if cell["window"] is None:
            if parse_sampler(cell["sampler"])["ts"] and cell["steps"] not in settings:
                raise ValueError(f"--extra_cells: no window/cutoff for {cell['sampler']} at {cell['steps']} steps; "
                                 "give SAMPLER:STEPS:WINDOW:CUTOFF")
            cell["window"], cell["cutoff"] = settings.get(cell["steps"], (0, 0))
        cells.append(dict(cell, grid=False))
    seen = {}
    for c in cells:
        c["key"] = cell_key(c)
        c["nfe"] = solver_nfe(parse_sampler(c["sampler"])["solver"], c["steps"])
        seen.setdefault(c["key"], c)
    return list(seen.values())


def respacing_of(cell, args):
    """The cell's --timestep_respacing: quadN for '-quad' samplers, else by --respacing."""
    n = cell["steps"]
    if parse_sampler(cell["sampler"])["quad"]:
        return f"quad{n}"
    return {"ddim": f"ddim{n}", "pndm": f"pndm{n}"}.get(args.respacing, str(n))


def set_nfe(cells, args, num_base_steps):
    """Each cell's NFE from the steps its grid really has (pndmN has N - 1) and its solver."""
    from guided_diffusion.respace import space_timesteps

    for c in cells:
        steps = len(space_timesteps(num_base_steps, respacing_of(c, args)))
        c["nfe"] = solver_nfe(parse_sampler(c["sampler"])["solver"], steps)


def cell_job(base_job, cell, args):
    """The sampling job of one cell: the user's model and run settings plus the cell's sampler settings."""
    p = parse_sampler(cell["sampler"])
    respacing = respacing_of(cell, args)
    return base_job.with_flags(
        use_ddim=p["solver"] != "ddpm", solver="" if p["solver"] in ("ddim", "ddpm") else p["solver"],
        do_time_shift=p["ts"], ts_rule=p["rule"],
        window=cell["window"], cutoff=cell["cutoff"], timestep_respacing=respacing,
        out_dir=os.path.join(args.table_dir, "cells", cell["key"]), data_type="table", model_type=cell["sampler"],
        grid="", compare_grid="", **cell["corrections"],
    )


def cell_npz(cell, args):
    folder = os.path.join(args.table_dir, "cells", cell["key"])
    names = [f for f in os.listdir(folder) if f.endswith(".npz") and not f.endswith("_trace.npz")] \
        if os.path.isdir(folder) else []
    return os.path.join(folder, names[0]) if len(names) == 1 else None


def load_results(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def save_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


# ------------------------------------------------------------------ report
def baseline_of(cell, cells):
    """The plain cell to compare with: same solver, grid and steps, no time shift, no corrections."""
    p = parse_sampler(cell["sampler"])
    name = p["solver"] + ("-quad" if p["quad"] else "")
    if name == cell["sampler"] and not cell["corrections"]:
        return None
    return next((c for c in cells if c["sampler"] == name and c["steps"] == cell["steps"] and not c["corrections"]),
                None)


def compare(r, base):
    """' (better)' / ' (worse)' when the FID gap exceeds 2 x the combined bootstrap sd, else ''."""
    if not r or not base or r.get("fid_sd") is None or base.get("fid_sd") is None:
        return ""
    gap = r["fid"] - base["fid"]
    bound = 2 * math.hypot(r["fid_sd"], base["fid_sd"])
    if abs(gap) <= bound:
        return ""
    return " (better)" if gap < 0 else " (worse)"


def format_cell(r, base=None):
    if not r:
        return "-"
    text = f"{r['fid']:.2f}"
    if r.get("fid_sd") is not None:
        text += f" ± {r['fid_sd']:.2f}"
    if r.get("kid_mean") is not None:
        text += f" / KID {1e3 * r['kid_mean']:.2f} ± {1e3 * (r.get('kid_se') or 0):.2f}"
    return text + compare(r, base)


def write_report(args, cells, results):
    """table.md (main grid, then search cells) and fid_vs_nfe.png; returns the table text."""
    pub = PUBLISHED.get(args.published, {})
    steps_list = sorted({c["steps"] for c in cells if c["grid"]})
    lines = [
        f"FID ± bootstrap sd / KID x10^3 ± standard error ({args.num_samples} samples per cell, same seeds in "
        f"every cell, reference {os.path.basename(args.ref_batch)}). (better)/(worse): the FID differs from the "
        "plain sampler (same solver and steps, no shift, no corrections) by more than 2 x the combined bootstrap "
        "sd; the bootstrap sd covers only the sample side, and cells share seeds, so this is a rough guide. KID's ± "
        "is the standard error over KID's random subsets: when a cell has no more samples than the subset size "
        "(1,000), every subset holds all its samples and the ± reflects only the reference side, so it understates "
        "the sampling noise; judge gaps by the FID sd.",
        "",
    ]
    if pub:
        lines += [f"In brackets: published, {pub['_note']}.", ""]
    lines += ["| sampler | " + " | ".join(f"{s} steps" for s in steps_list) + " |",
              "|---|" + "---|" * len(steps_list)]
    for sampler in dict.fromkeys(c["sampler"] for c in cells if c["grid"]):
        row = []
        for s in steps_list:
            c = next((c for c in cells if c["grid"] and c["sampler"] == sampler and c["steps"] == s), None)
            r = results.get(c["key"]) if c else None
            base = baseline_of(c, cells) if c else None
            text = format_cell(r, results.get(base["key"]) if base else None)
            if c and c["nfe"] != c["steps"]:
                text += f" (NFE {c['nfe']})"
            if c and parse_sampler(sampler)["ts"]:
                text += f" (w{c['window']}, c{c['cutoff']})"
            if s in pub.get(sampler, {}):
                text += f" [{pub[sampler][s]:.2f}]"
            row.append(text)
        lines.append(f"| {sampler_label(sampler)} | " + " | ".join(row) + " |")
    extra = [c for c in cells if not c["grid"]]
    if extra:
        lines += ["", "Search cells (and the main-grid cells they vary):", "",
                  "| sampler | steps | NFE | window | cutoff | corrections | FID ± sd / KID x10^3 ± se |",
                  "|---|---|---|---|---|---|---|"]
        shown = extra + [c for c in cells if c["grid"] and any(e["steps"] == c["steps"] for e in extra)]
        for c in sorted(shown, key=lambda c: (c["steps"], c["sampler"], str(c["window"]), c["key"])):
            base = baseline_of(c, cells)
            text = format_cell(results.get(c["key"]), results.get(base["key"]) if base else None)
            ts = parse_sampler(c["sampler"])["ts"]
            corr = ", ".join(f"{k}={format_number(v)}" for k, v in c["corrections"].items()) or "-"
            lines.append(f"| {sampler_label(c['sampler'])} | {c['steps']} | {c['nfe']} | "
                         f"{c['window'] if ts else '-'} | {c['cutoff'] if ts else '-'} | {corr} | {text} |")
    text = "\n".join(lines) + "\n"
    write_text_atomic(os.path.join(args.table_dir, "table.md"), text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    samplers = list(dict.fromkeys(c["sampler"] for c in cells if c["grid"]))

    def family(name):  # one colour per solver and grid: the plain sampler dashed, its TS variants solid
        p = parse_sampler(name)
        return (p["solver"], p["quad"])

    families = list(dict.fromkeys(family(s) for s in samplers))
    palette = plt.get_cmap("tab10" if len(families) <= 10 else "tab20")
    for sampler in samplers:
        pts = sorted((c["nfe"], results[c["key"]]["fid"], results[c["key"]].get("fid_sd") or 0) for c in cells
                     if c["grid"] and c["sampler"] == sampler and c["key"] in results)
        if pts:
            p = parse_sampler(sampler)
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, marker="s" if p["quad"] else "o", capsize=2, label=sampler_label(sampler),
                        color=palette(families.index(family(sampler)) % palette.N),
                        linestyle="-" if p["ts"] else "--", alpha=1.0 if p["ts"] else 0.8)
    ax.set_xscale("log")
    nfes = sorted({c["nfe"] for c in cells if c["grid"] and c["key"] in results})
    if nfes:  # label the NFEs measured, in plain numbers (log-axis defaults read 2x10^1, 2.02x10^1, ...)
        from matplotlib.ticker import NullFormatter

        ax.set_xticks(nfes)
        ax.set_xticklabels([str(n) for n in nfes], fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("NFE (network evaluations)")
    ax.set_ylabel("FID (± bootstrap sd)")
    ax.set_title("dashed: plain sampler; solid, same colour: with the time shift", fontsize=8)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(os.path.join(args.table_dir, "fid_vs_nfe.png"), fig)
    plt.close(fig)
    return text


# ------------------------------------------------------------------ command
def table_parser():
    """The table's own flags, shown in --help above the sampling flags it passes on."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    p.add_argument("--table_dir", required=True, help="folder for cells, results.json, table.md and the plot")
    p.add_argument("--ref_batch", default="", help="reference for FID/KID: an image npz (arr_0) or the statistics "
                   "file of evaluations/evaluator.py --stats (with pool_3 features for KID)")
    p.add_argument("--steps", default="5,10,20,50", help="comma list of step counts")
    p.add_argument("--samplers", default="ddim,ts-ddim,ts-ddim-pndm,ddpm,ts-ddpm",
                   help="comma list of sampler names ([ts-]SOLVER[-RULE][-quad], see the top of --help)")
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="window/cutoff per step count")
    p.add_argument("--ts_settings", default="", help="override the preset: STEPS:WINDOW:CUTOFF,...")
    p.add_argument("--extra_cells", default="",
                   help="search cells SAMPLER:STEPS[:WINDOW:CUTOFF][:key=value...],... (own table)")
    p.add_argument("--respacing", default="ddim", choices=["ddim", "uniform", "pndm"],
                   help="ddim: 'ddimN' grids (0, T/N, ...); uniform: 'N' (includes T-1); pndm: 'pndmN' (the TS-DPM "
                        "DDPM-backbone repo's grid, N - 1 steps, as in the paper's Table 1); '-quad' samplers use quadN")
    p.add_argument("--phase", default="all", choices=["all", "sample", "evaluate", "report"], help="what to run")
    p.add_argument("--published", default="none", choices=["none"] + sorted(PUBLISHED),
                   help="published numbers to show beside the cells")
    p.add_argument("--inception_path", default=None, help="Inception weights for the evaluator")
    p.add_argument("--eval_device", default=None, help="device for the evaluator (default: cuda if available)")
    p.add_argument("--fid_method", default="eigh", choices=["eigh", "sqrtm"],
                   help="matrix square root for FID: eigh (fast; agrees with sqrtm to ~1e-3) or sqrtm")
    p.add_argument("--fid_bootstrap", type=int, default=200,
                   help="bootstrap rounds over samples for the FID sd (0: none)")
    p.add_argument("--kid_subsets", type=int, default=100, help="KID subsets (0: no KID)")
    return p


def _eta(done, total, started):
    if not done or total <= done:
        return ""
    left = (time.time() - started) / done * (total - done)
    return f"; about {left / 60:.1f} min left for the {total - done} remaining"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    own = table_parser()
    if "-h" in argv or "--help" in argv:
        full = sampling_parser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1])
        for action in own._actions:
            full._add_action(action)
        full.parse_args(["--help"])
    ours, rest = own.parse_known_args(argv)
    base_job, _ = parse_sampling_flags(rest)  # validates the model/sampling flags; demo model if none
    ours.num_samples = base_job.run.num_samples
    cells = plan_cells(ours)
    set_nfe(cells, ours, base_job.diffusion.diffusion_steps)
    for cell in cells:  # every cell's settings are valid before anything runs
        cell_job(base_job, cell, ours).validate()
    os.makedirs(ours.table_dir, exist_ok=True)
    results_path = os.path.join(ours.table_dir, "results.json")

    from guided_diffusion import dist_util

    if ours.phase in ("all", "sample"):
        dist_util.setup_dist()
        todo = [c for c in cells if cell_npz(c, ours) is None]
        started = time.time()
        for n, cell in enumerate(todo):
            run_sampling(cell_job(base_job, cell, ours))
            dist_util.barrier()
            if dist_util.get_rank() == 0:
                print(f"sampled cell {n + 1}/{len(todo)} ({cell['key']}){_eta(n + 1, len(todo), started)}",
                      flush=True)
    if dist_util.get_rank() != 0:
        return
    results = load_results(results_path)
    if ours.phase in ("all", "evaluate"):
        if not ours.ref_batch:
            raise ValueError("--ref_batch is needed to evaluate: a reference npz (images or mu/sigma)")
        from evaluations.evaluator import evaluate
        from evaluations.inception import load_inception
        from evaluations.evaluator import default_device

        # Whole step-count columns first (grid before search cells), so a partial run compares samplers.
        todo = [c for c in sorted(cells, key=lambda c: (not c["grid"], c["steps"]))
                if c["key"] not in results and cell_npz(c, ours) is not None]
        started = time.time()
        net = None
        for n, cell in enumerate(todo):
            if net is None:
                net = load_inception(ours.inception_path, ours.eval_device or default_device())
            r = evaluate(ours.ref_batch, cell_npz(cell, ours), device=ours.eval_device, progress=False,
                         fid_method=ours.fid_method, net=net, fid_bootstrap=ours.fid_bootstrap,
                         kid_subsets=ours.kid_subsets)
            entry = {k: cell[k] for k in ("sampler", "steps", "window", "cutoff", "corrections", "nfe")}
            entry.update(fid=r["fid"], fid_sd=r.get("fid_bootstrap_sd"), kid_mean=r.get("kid_mean"),
                         kid_se=r.get("kid_se"), kid_std=r.get("kid_std"), num_samples=r["num_sample_images"])
            results[cell["key"]] = entry
            save_json_atomic(results_path, results)
            print(f"{cell['key']}: FID {r['fid']:.3f} (evaluated {n + 1}/{len(todo)}"
                  f"{_eta(n + 1, len(todo), started)})", flush=True)
        print(f"wrote {results_path}")
    if ours.phase in ("all", "report", "evaluate"):
        print(write_report(ours, cells, results))
        print(f"wrote {os.path.join(ours.table_dir, 'table.md')}")
        print(f"wrote {os.path.join(ours.table_dir, 'fid_vs_nfe.png')}")


if __name__ == "__main__":
    run_cli(main)
