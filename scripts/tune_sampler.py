r"""Tune the time grid, solver, time shift (window, cutoff, rule), epsilon scaling and DCW for one checkpoint.

For a checkpoint and a step count, successive halving on KID: every setting at the first budget of
--rungs, each family's best --keep fraction at the next, ..., then the families' best combined; the
plain sampler (no shift, no corrections, the base grid and solver) is evaluated on the same seeds at
every rung. --grids and --solvers add the grid and the solver to the search (every shift and
correction is tried on each grid x solver). Prints overall progress and the time left, a table per
rung, the chosen setting with its KID/FID and their uncertainty, the plain sampler's, whether the
gain exceeds the uncertainty, and the image_sample_1gpu.py command that writes the chosen setting's
--num_samples samples to --out_dir.

    python scripts/tune_sampler.py --ref_batch data/fmnist_stats.npz --steps 10 --use_ddim True \
        --grids ddimN,trailingN --rungs 250,1000 --cache_dir runs/tune --json runs/tune/demo.json

With no --model_path and no model flags it tunes the bundled demo model. The other flags below are
those of scripts/image_sample_1gpu.py that the tuner passes on (model, diffusion, --solver,
--use_ddim, --seed, --batch_size, ...). Every evaluation is cached under --cache_dir by checkpoint
SHA-256 (the cache scripts/fid_table.py also reads), so a rerun evaluates nothing and an interrupted
run (Ctrl-C stops it at a safe point, exit status 130) resumes. See docs/tuning.md.
"""

import argparse
import json
import os
import sys

from evaluations.inception import InceptionWeightsError
from guided_diffusion.jobs import tuning as tuning
from guided_diffusion.io_util import write_text_atomic
from guided_diffusion.cli import run_cli
from guided_diffusion.errors import user_errors
from guided_diffusion.jobs.sample import parse_sampling_flags
from guided_diffusion.sampler.time_shift import TS_RULES
from guided_diffusion.settings import (SAMPLING_GROUPS, SOLVER_NAMES, EvalConfig, OneLineErrorParser, RunConfig,
                                       add_argument, add_settings, configs_from_args, declared, finite_float,
                                       format_number, nonneg_int, str2bool)

SPACE = tuning.SearchSpace()  # the defaults of the search flags


def _list(parse, name):
    def parse_list(text):
        items = [t.strip() for t in str(text).split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{name}: give a comma list")
        return tuple(parse(t) for t in items)

    return parse_list


def _solver(text):
    if text not in SOLVER_NAMES:
        raise argparse.ArgumentTypeError(f"unknown solver {text!r}; choose from {', '.join(SOLVER_NAMES)}")
    return text


def _rule(text):
    if text not in TS_RULES:
        raise argparse.ArgumentTypeError(f"unknown rule {text!r}; choose from {', '.join(TS_RULES)}")
    return text


REJECTED = tuning.SEARCHED_FLAGS + tuning.FIXED_FLAGS


def tuner_parser():
    """The tuner's own flags (and the evaluator's, declared in settings.EvalConfig)."""
    p = OneLineErrorParser(add_help=False, allow_abbrev=False)
    g = p.add_argument_group("tuner")
    g.add_argument("--ref_batch", default="", help="reference: the statistics file of evaluations/evaluator.py "
                   "--stats (with pool_3 features, needed for KID) or an image npz (its statistics are made once "
                   "and cached)")
    g.add_argument("--steps", type=int, default=None,
                   help="step count N: the same as --timestep_respacing ddimN (give one of the two)")
    g.add_argument("--grids", type=_list(str, "--grids"), default=(),
                   help="time grids to search, a comma list of --timestep_respacing strings; N stands for the step "
                        "count: e.g. ddimN,trailingN,logsnrN,karrasN,file:GRID.json (default: the base grid only)")
    g.add_argument("--solvers", type=_list(_solver, "--solvers"), default=(),
                   help=f"solvers to search ({', '.join(SOLVER_NAMES)}; default: the base solver only)")
    for name, parse, default, text in (
            ("windows", nonneg_int, SPACE.windows, "time-shift windows to try; 0 = no shift (the plain sampler, "
                                                   "always included)"),
            ("cutoffs", nonneg_int, SPACE.cutoffs, "time-shift cutoffs to try"),
            ("rules", _rule, SPACE.rules, f"time-shift rules to try ({', '.join(TS_RULES)})"),
            ("eps_scales", finite_float, SPACE.eps_scales, "epsilon-scaling values to try alone (1 = off)"),
            ("dcw_lows", finite_float, SPACE.dcw_lows, "DCW low-band weights to try alone (0 = off)")):
        g.add_argument(f"--{name}", type=_list(parse, f"--{name}"), default=default,
                       help=f"{text} (default: {','.join(map(format_number, default))})")
    g.add_argument("--rungs", type=_list(int, "--rungs"), default=(250, 1000),
                   help="sample budgets, increasing: every candidate at the first, survivors at the next "
                        "(default: 250,1000)")
    g.add_argument("--keep", default="1/3", help="fraction of each family kept for the next rung (e.g. 1/3, 0.5; "
                   "default: 1/3)")
    g.add_argument("--cache_dir", default="tune_cache",
                   help="folder for cached evaluations and samples (one subfolder per checkpoint SHA-256; created "
                        "if missing; default: tune_cache)")
    g.add_argument("--keep_samples", type=str2bool, default=False,
                   help="keep the samples of eliminated settings (default: False: they are deleted after their rung)")
    g.add_argument("--json", default="", help="also write the report to this path as JSON (atomically; its folder "
                   "is created if missing)")
    add_argument(g, "num_samples", 1000, declared(RunConfig)["num_samples"],
                 help="samples the printed command makes with the chosen setting")
    add_argument(g, "out_dir", "tuned_samples", declared(RunConfig)["out_dir"],
                 help="output folder of the printed command")
    add_settings(p.add_argument_group("evaluation"), EvalConfig)
    return p


def sampling_flags_parser(**kw):
    """The sampling flags the tuner passes on: every sampling flag except those it sets itself."""
    p = OneLineErrorParser(allow_abbrev=False, **kw)
    add_settings(p.add_argument_group("sampling (passed on to every run)"), *SAMPLING_GROUPS,
                 skip=REJECTED + ("num_samples", "out_dir"))
    return p


def full_parser():
    return OneLineErrorParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                              parents=[tuner_parser(), sampling_flags_parser(add_help=False)])


def _check_can_create(path):
    """One-line error now, not after the search, when ``--json PATH``'s folder cannot be made or written."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ValueError(f"--json {path}: {folder} is not a writable folder")


def _given(argv, name):
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    for name in REJECTED:
        if _given(argv, name):
            raise ValueError(f"--{name} is set by the tuner; search with --grids/--solvers/--windows/--cutoffs/"
                             "--rules/--eps_scales/--dcw_lows and budget with --rungs/--cache_dir")
    full_parser().parse_args(argv)  # --help, and one-line errors for any unknown or malformed flag
    ours, rest = tuner_parser().parse_known_args(argv)
    if ours.steps is not None:
        if _given(rest, "timestep_respacing"):
            raise ValueError("give --steps or --timestep_respacing, not both")
        if ours.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {ours.steps}")
        rest += ["--timestep_respacing", f"ddim{ours.steps}"]
    elif not _given(rest, "timestep_respacing"):
        raise ValueError("give the step count: --steps N or --timestep_respacing (e.g. ddim10)")
    base_job, _ = parse_sampling_flags(rest, parser=sampling_flags_parser())  # the demo model if none
    keep = tuning.parse_keep(ours.keep)
    rungs = tuning.check_rungs(ours.rungs)
    options = configs_from_args(ours, EvalConfig)[0]
    options.validate()
    if ours.num_samples < 1:
        raise ValueError(f"--num_samples must be >= 1, got {ours.num_samples}")
    n = ours.steps or tuning.job_steps(base_job)
    space = tuning.SearchSpace(windows=ours.windows, cutoffs=ours.cutoffs, rules=ours.rules,
                               eps_scales=ours.eps_scales, dcw_lows=ours.dcw_lows,
                               grids=tuple(tuning.grid_for(t, n) for t in ours.grids), solvers=ours.solvers)
    if ours.json:  # its folder is made when the report is written; a folder that cannot be made fails now
        _check_can_create(ours.json)
    try:
        report = tuning.tune(base_job, ours.ref_batch, ours.cache_dir, space=space, rungs=rungs, keep=keep,
                             eval_options=options, keep_samples=ours.keep_samples, base_argv=rest,
                             command_run=dict(num_samples=ours.num_samples, out_dir=ours.out_dir))
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once
        sys.stderr.write("tune_sampler.py: interrupted; finished evaluations are cached: rerun the same command "
                         "to resume\n")
        sys.exit(130)
    print(tuning.format_report(report), flush=True)
    if ours.json:
        os.makedirs(os.path.dirname(os.path.abspath(ours.json)), exist_ok=True)
        write_text_atomic(ours.json, json.dumps(report, indent=1, sort_keys=True) + "\n")
        print(f"wrote {ours.json}")


if __name__ == "__main__":
    run_cli(main, errors=user_errors() + (InceptionWeightsError,))
