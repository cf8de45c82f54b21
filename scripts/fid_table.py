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
Grids: --respacing (ddim, uniform, pndm, or any --timestep_respacing string with N for the step
count) or --grids (several, one table row per sampler and grid), e.g. --grids ddimN,trailingN.

Phases (``--phase``): "sample" writes each cell's npz (resumable, multi-process under mpiexec),
"evaluate" computes FID (with a bootstrap sd), KID (with its standard error when the reference
statistics carry features) for each sampled cell, through the score cache (--cache_dir, shared with
scripts/tune_sampler.py) and into ``results.json``; "report" writes ``table.md`` and
``fid_vs_nfe.png`` from the cache alone (nothing sampled or evaluated: rerun the same command with
--phase report); "all" does the three. A rerun skips finished cells. Window and cutoff per
step count come from ``--preset`` ("paper": Figure 7's windows 40/30/8/2 for 10/20/50/100 steps with
cutoff 300, and window 80, cutoff 300 at 5 steps; "demo", the default for the bundled demo model: its
measured best, ``DEMO_TS_PRESETS`` in guided_diffusion/demo.py) or ``--ts_settings``.
Extra cells (``--extra_cells``) add searches: SAMPLER:STEPS[:WINDOW:CUTOFF][:key=value...] with
keys eps_scale, eps_scale_k, dcw_low, dcw_high (e.g. ddim:10:eps_scale=1.004,
ts-ddim:10:20:300:dcw_low=0.02), and grid=GRID last (e.g. ddim:10:grid=trailing10).
The library is guided_diffusion/jobs/bench.py (cells, phases) and guided_diffusion/jobs/report.py.
"""

import os
import shlex
import sys
import time

from guided_diffusion.cli import run_cli
from guided_diffusion.jobs import bench
from guided_diffusion.jobs import report as bench_report
from guided_diffusion.jobs.sample import parse_sampling_flags, run_sampling
from guided_diffusion.settings import SAMPLING_GROUPS, EvalConfig, OneLineErrorParser, add_settings


def table_parser():
    """The table's own flags and the evaluator's (declared in settings.EvalConfig)."""
    p = OneLineErrorParser(add_help=False, allow_abbrev=False)
    g = p.add_argument_group("table")
    g.add_argument("--table_dir", required=True, help="folder for cells, results.json, table.md and the plot")
    g.add_argument("--ref_batch", default="", help="reference for FID/KID: an image npz (arr_0) or the statistics "
                   "file of evaluations/evaluator.py --stats (with pool_3 features for KID)")
    g.add_argument("--steps", default="5,10,20,50", help="comma list of step counts (default: 5,10,20,50)")
    g.add_argument("--samplers", default="ddim,ts-ddim,ts-ddim-pndm,ddpm,ts-ddpm",
                   help="comma list of sampler names ([ts-]SOLVER[-RULE][-quad], see the top of --help)")
    g.add_argument("--preset", default="", choices=[""] + sorted(bench.PRESETS),
                   help="window/cutoff per step count: paper (the TS-DPM paper's Figure 7) or demo (the bundled "
                   "demo model's measured best, guided_diffusion/demo.py); default: demo for the demo model, else paper")
    g.add_argument("--ts_settings", default="", help="override the preset: STEPS:WINDOW:CUTOFF[:grid=TEMPLATE][:sampler=NAME],... "
                   "(an item naming a --grids template and/or a sampler applies to those cells only)")
    g.add_argument("--extra_cells", default="",
                   help="search cells SAMPLER:STEPS[:WINDOW:CUTOFF][:key=value...][:grid=GRID],... (own table)")
    g.add_argument("--respacing", default="ddim",
                   help="grid of every cell: ddim: 'ddimN' grids (0, T/N, ...); uniform: 'N' (includes T-1); pndm: "
                        "'pndmN' (the TS-DPM DDPM-backbone repo's grid, N - 1 steps, as in the paper's Table 1); or "
                        "any --timestep_respacing string, N standing for the step count (e.g. trailingN); '-quad' "
                        "samplers use quadN (default: ddim)")
    g.add_argument("--grids", default="", help="several grids, one row per sampler and grid: a comma list of "
                   "--timestep_respacing strings with N for the step count ({N} in a file: path, e.g. "
                   "ddimN,trailingN,file:docs/grids/demo_fmnist32_ddim_{N}.json)")
    g.add_argument("--phase", default="all", choices=["all", "sample", "evaluate", "report"], help="what to run")
    g.add_argument("--published", default="none", choices=["none"] + sorted(bench_report.published()),
                   help="published numbers to show beside the cells (guided_diffusion/assets/published.json)")
    g.add_argument("--cache_dir", default="", help="score cache (default: TABLE_DIR/cache; give the tuner's "
                   "--cache_dir to share its scores)")
    g.add_argument("--plot_by", default="solver", choices=["solver", "grid"],
                   help="colours of the FID-vs-NFE plot: one per solver and grid, or one per grid")
    g.add_argument("--import_from", default="", help="comma list of earlier table folders whose cells (same "
                   "checkpoint, pixel settings and sample count) and scores this table adopts instead of sampling "
                   "and scoring them again")
    add_settings(p.add_argument_group("evaluation"), EvalConfig)
    return p


def full_parser():
    sampling = OneLineErrorParser(add_help=False, allow_abbrev=False)
    add_settings(sampling.add_argument_group("sampling (every cell)"), *SAMPLING_GROUPS)
    import argparse

    return OneLineErrorParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                              parents=[table_parser(), sampling])


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        full_parser().parse_args(["--help"])
    ours, rest = table_parser().parse_known_args(argv)
    base_job, _ = parse_sampling_flags(rest)  # validates the model/sampling flags; demo model if none
    entries = bench.plan(ours, base_job)
    for e in entries:  # every cell's settings are valid before anything runs
        bench.cell_job(base_job, e, ours.table_dir).validate()
    cache = bench.open_cache(ours, base_job) if ours.ref_batch else None
    os.makedirs(ours.table_dir, exist_ok=True)
    results_path = os.path.join(ours.table_dir, "results.json")

    from guided_diffusion import dist_util

    if ours.import_from and dist_util.get_rank() == 0:
        bench.import_earlier_cells(entries, base_job, ours.table_dir, cache,
                                   [d for d in ours.import_from.split(",") if d.strip()])
    if ours.phase in ("all", "sample"):
        dist_util.setup_dist()
        todo = [e for e in entries if bench.cell_npz(e, ours.table_dir) is None]
        started = time.time()
        for n, e in enumerate(todo):
            run_sampling(bench.cell_job(base_job, e, ours.table_dir))
            dist_util.barrier()
            if dist_util.get_rank() == 0:
                print(f"sampled cell {n + 1}/{len(todo)} ({e.key}){bench.eta(n + 1, len(todo), started)}",
                      flush=True)
    if dist_util.get_rank() != 0 or ours.phase == "sample":
        return
    if ours.phase in ("all", "evaluate"):
        if cache is None:
            raise ValueError("--ref_batch is needed to evaluate: a reference npz (images or mu/sigma)")
        results = bench.evaluate_cells(entries, base_job, ours.table_dir, cache, log=lambda t: print(t, flush=True))
        print(f"wrote {results_path}")
    elif cache is not None:
        results = bench.cached_results(entries, base_job, ours.table_dir, cache)
    else:
        results = bench.load_results(results_path)
    command = shlex.join(["python", sys.argv[0], *argv])
    text = bench_report.write_report(ours.table_dir, entries, results, num_samples=base_job.run.num_samples,
                                     reference=ours.ref_batch, provenance_info=bench_report.provenance(command),
                                     published_set=bench_report.published(ours.published), plot_by=ours.plot_by)
    print(text)
    print(f"wrote {os.path.join(ours.table_dir, 'table.md')}")
    print(f"wrote {os.path.join(ours.table_dir, 'fid_vs_nfe.png')}")


if __name__ == "__main__":
    run_cli(main)
