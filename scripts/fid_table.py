"""Regenerate a FID table: a grid of step counts x samplers, sampled, evaluated, tabulated and plotted.

Paper Table 2 (CIFAR-10, ADM checkpoint, GPU; reference statistics from evaluations/evaluator.py --stats):

    mpiexec -n 8 python scripts/fid_table.py --model_path ADM.pt --image_size 32 --num_channels 128 \
        --num_head_channels 32 --num_res_blocks 3 --attention_resolutions 16,8 --resblock_updown True \
        --use_new_attention_order True --learn_sigma True --noise_schedule cosine \
        --use_scale_shift_norm True --ref_batch cifar10_train_stats.npz --table_dir runs/table2 \
        --num_samples 50000 --batch_size 512 --published cifar10_adm

Phases (``--phase``): "sample" writes each cell's npz (resumable, multi-process under mpiexec),
"evaluate" computes FID for each sampled cell, "report" writes ``table.md``, ``results.json`` and
``fid_vs_nfe.png``; "all" does the three. A rerun skips finished cells. Window and cutoff per step
count come from ``--preset`` (default "paper": Figure 7's windows 40/30/8/2 for 10/20/50/100 steps
with cutoff 300, and the README's window 80, cutoff 300 at 5 steps) or ``--ts_settings``.

With no --model_path and no model flags it uses the bundled demo model (Fashion-MNIST), as the
sampling scripts do. Every other flag of scripts/image_sample_1gpu.py (model, diffusion, --batch_size,
--num_samples, --seed, ...) is accepted and applies to every cell.
"""

import argparse
import json
import os
import sys
import time

from guided_diffusion.io_util import run_cli, save_figure_atomic, write_text_atomic
from guided_diffusion.sample_run import parse_sampling_flags, run_sampling, sampling_parser

PRESETS = {
    "paper": {5: (80, 300), 10: (40, 300), 20: (30, 300), 50: (8, 300), 100: (2, 300)},
}
SAMPLERS = {  # name: (use_ddim, do_time_shift, ts_rule, label)
    "ddim": (True, False, "adm", "DDIM"),
    "ts-ddim": (True, True, "adm", "TS-DDIM (adm rule)"),
    "ts-ddim-pndm": (True, True, "pndm", "TS-DDIM (pndm rule)"),
    "ddpm": (False, False, "adm", "DDPM"),
    "ts-ddpm": (False, True, "adm", "TS-DDPM (adm rule)"),
    "ts-ddpm-pndm": (False, True, "pndm", "TS-DDPM (pndm rule)"),
}
# Published FIDs (shared/docs/paper_tables.md): {set: {sampler: {steps: fid}}, "_note": text}.
PUBLISHED = {
    "cifar10_adm": {
        "_note": "TS-DPM paper Table 2: CIFAR-10, ADM backbone, DDIM uniform",
        "ddim": {5: 28.98, 10: 12.11, 20: 7.14, 50: 4.45},
        "ts-ddim": {5: 26.94, 10: 10.73, 20: 5.35, 50: 3.52},
    },
    "cifar10_ddpm_backbone": {
        "_note": "TS-DPM paper Table 1: CIFAR-10, DDPM 35.7M backbone (pytorch-fid), uniform skip",
        "ddim": {5: 44.60, 10: 18.71, 20: 11.05, 50: 7.09, 100: 5.66},
        "ts-ddim": {5: 35.13, 10: 12.21, 20: 8.03, 50: 5.56, 100: 4.56},
        "ddpm": {5: 83.90, 10: 42.04, 20: 24.60, 50: 14.76, 100: 10.66},
        "ts-ddpm": {5: 67.06, 10: 33.36, 20: 22.21, 50: 13.64, 100: 9.69},
    },
}


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
    """ "ts-ddim:10:20:300,ts-ddim:10:80:200" -> [(sampler, steps, window, cutoff), ...]."""
    cells = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split(":")
        if len(parts) != 4 or parts[0] not in SAMPLERS:
            raise ValueError(f"--extra_cells item {item!r}: expected SAMPLER:STEPS:WINDOW:CUTOFF")
        cells.append((parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
    return cells


def cell_key(sampler, steps, window, cutoff):
    return f"{sampler}_{steps}" + (f"_w{window}_c{cutoff}" if SAMPLERS[sampler][1] else "")


def plan_cells(args):
    """Main-grid cells then extra (search) cells: dicts with sampler, steps, window, cutoff, key, grid."""
    settings = dict(PRESETS[args.preset])
    settings.update(parse_ts_settings(args.ts_settings))
    steps_list = [int(s) for s in args.steps.split(",") if s.strip()]
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown:
        raise ValueError(f"--samplers: unknown {', '.join(unknown)}; choose from {', '.join(SAMPLERS)}")
    missing = [s for s in steps_list if s not in settings]
    if missing and any(SAMPLERS[s][1] for s in samplers):
        raise ValueError(f"no window/cutoff for steps {missing}: add them with --ts_settings STEPS:WINDOW:CUTOFF")
    cells = []
    for sampler in samplers:
        for steps in steps_list:
            window, cutoff = settings.get(steps, (0, 0))
            cells.append(dict(sampler=sampler, steps=steps, window=window, cutoff=cutoff, grid=True))
    for sampler, steps, window, cutoff in parse_extra_cells(args.extra_cells):
        cells.append(dict(sampler=sampler, steps=steps, window=window, cutoff=cutoff, grid=False))
    seen = {}
    for c in cells:
        c["key"] = cell_key(c["sampler"], c["steps"], c["window"], c["cutoff"])
        seen.setdefault(c["key"], c)
    return list(seen.values())


def cell_job(base_job, cell, args):
    """The sampling job of one cell: the user's model and run settings plus the cell's sampler settings."""
    use_ddim, ts, rule, _ = SAMPLERS[cell["sampler"]]
    respacing = f"ddim{cell['steps']}" if args.respacing == "ddim" else str(cell["steps"])
    return base_job.with_flags(
        use_ddim=use_ddim, do_time_shift=ts, ts_rule=rule, window=cell["window"], cutoff=cell["cutoff"],
        timestep_respacing=respacing, out_dir=os.path.join(args.table_dir, "cells", cell["key"]),
        data_type="table", model_type=cell["sampler"], grid="", compare_grid="",
    )


def cell_npz(cell, args):
    folder = os.path.join(args.table_dir, "cells", cell["key"])
    names = [f for f in os.listdir(folder) if f.endswith(".npz")] if os.path.isdir(folder) else []
    return os.path.join(folder, names[0]) if len(names) == 1 else None


def load_results(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def save_json_atomic(path, obj):
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def write_report(args, cells, results):
    """table.md (main grid, then search cells) and fid_vs_nfe.png."""
    pub = PUBLISHED.get(args.published, {})
    steps_list = sorted({c["steps"] for c in cells if c["grid"]})
    lines = [f"FID ({args.num_samples} samples per cell, reference {os.path.basename(args.ref_batch)}); "
             "NFE = steps.", ""]
    if pub:
        lines += [f"In brackets: published, {pub['_note']}.", ""]
    lines += ["| sampler | " + " | ".join(f"{s} steps" for s in steps_list) + " |",
              "|---|" + "---|" * len(steps_list)]
    for sampler in dict.fromkeys(c["sampler"] for c in cells if c["grid"]):
        row = []
        for s in steps_list:
            c = next((c for c in cells if c["grid"] and c["sampler"] == sampler and c["steps"] == s), None)
            r = results.get(c["key"]) if c else None
            text = f"{r['fid']:.2f}" if r else "-"
            if c and SAMPLERS[sampler][1]:
                text += f" (w{c['window']}, c{c['cutoff']})"
            if s in pub.get(sampler, {}):
                text += f" [{pub[sampler][s]:.2f}]"
            row.append(text)
        lines.append(f"| {SAMPLERS[sampler][3]} | " + " | ".join(row) + " |")
    extra = [c for c in cells if not c["grid"]]
    if extra:
        lines += ["", "Window / cutoff search:", "", "| sampler | steps | window | cutoff | FID |", "|---|---|---|---|---|"]
        for c in sorted(extra + [c for c in cells if c["grid"] and SAMPLERS[c["sampler"]][1]],
                        key=lambda c: (c["sampler"], c["steps"], c["window"], c["cutoff"])):
            r = results.get(c["key"])
            lines.append(f"| {SAMPLERS[c['sampler']][3]} | {c['steps']} | {c['window']} | {c['cutoff']} | "
                         f"{r['fid']:.2f} |" if r else f"| {SAMPLERS[c['sampler']][3]} | {c['steps']} | "
                         f"{c['window']} | {c['cutoff']} | - |")
    text = "\n".join(lines) + "\n"
    write_text_atomic(os.path.join(args.table_dir, "table.md"), text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for sampler in dict.fromkeys(c["sampler"] for c in cells if c["grid"]):
        pts = sorted((c["steps"], results[c["key"]]["fid"]) for c in cells
                     if c["grid"] and c["sampler"] == sampler and c["key"] in results)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=SAMPLERS[sampler][3],
                    linestyle="-" if SAMPLERS[sampler][1] else "--")
    ax.set_xscale("log")
    ax.set_xlabel("NFE (sampling steps)")
    ax.set_ylabel("FID")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(os.path.join(args.table_dir, "fid_vs_nfe.png"), fig)
    plt.close(fig)
    return text


def table_parser():
    """The table's own flags, shown in --help above the sampling flags it passes on."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    p.add_argument("--table_dir", required=True, help="folder for cells, results.json, table.md and the plot")
    p.add_argument("--ref_batch", default="", help="reference npz for FID: images (arr_0) or mu/sigma statistics")
    p.add_argument("--steps", default="5,10,20,50", help="comma list of step counts")
    p.add_argument("--samplers", default="ddim,ts-ddim,ts-ddim-pndm,ddpm,ts-ddpm",
                   help=f"comma list from {', '.join(SAMPLERS)}")
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="window/cutoff per step count")
    p.add_argument("--ts_settings", default="", help="override the preset: STEPS:WINDOW:CUTOFF,...")
    p.add_argument("--extra_cells", default="", help="search cells SAMPLER:STEPS:WINDOW:CUTOFF,... (own table)")
    p.add_argument("--respacing", default="ddim", choices=["ddim", "uniform"],
                   help="ddim: 'ddimN' grids (0, T/N, ...); uniform: 'N' (includes T-1)")
    p.add_argument("--phase", default="all", choices=["all", "sample", "evaluate", "report"], help="what to run")
    p.add_argument("--published", default="none", choices=["none"] + sorted(PUBLISHED),
                   help="published numbers to show beside the cells")
    p.add_argument("--inception_path", default=None, help="Inception weights for the evaluator")
    p.add_argument("--eval_device", default=None, help="device for the evaluator (default: cuda if available)")
    p.add_argument("--fid_method", default="eigh", choices=["eigh", "sqrtm"],
                   help="matrix square root for FID: eigh (fast; agrees with sqrtm to ~1e-3) or sqrtm")
    return p


def _eta(done, total, started):
    if not done:
        return ""
    left = (time.time() - started) / done * (total - done)
    return f"; about {left / 60:.1f} min left for the {total - done} remaining" if total > done else ""


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

        # Whole step-count columns first (grid before search cells), so a partial run compares samplers.
        todo = [c for c in sorted(cells, key=lambda c: (not c["grid"], c["steps"]))
                if c["key"] not in results and cell_npz(c, ours) is not None]
        started = time.time()
        for n, cell in enumerate(todo):
            npz = cell_npz(cell, ours)
            r = evaluate(ours.ref_batch, npz, inception_path=ours.inception_path, device=ours.eval_device,
                         progress=False, fid_method=ours.fid_method)
            results[cell["key"]] = {k: cell[k] for k in ("sampler", "steps", "window", "cutoff")}
            results[cell["key"]].update(fid=r["fid"], num_samples=r["num_sample_images"], nfe=cell["steps"])
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
