r"""Tune the time shift (window, cutoff, rule), epsilon scaling and the DCW weight for one checkpoint.

For a checkpoint, a solver and a step count, successive halving on KID: every setting at the first
budget of --rungs, each family's best --keep fraction at the next, ..., then the families' best
combined; the plain sampler (no shift, no corrections) is evaluated on the same seeds at every
rung. Prints a table per rung, the chosen setting with its KID/FID and their uncertainty, the plain
sampler's, whether the gain exceeds the uncertainty, and the image_sample_1gpu.py command to use it.

    python scripts/tune_sampler.py --ref_batch data/fmnist_stats.npz --steps 10 --use_ddim True \
        --rungs 250,1000 --cache_dir runs/tune

With no --model_path and no model flags it tunes the bundled demo model. Every other flag of
scripts/image_sample_1gpu.py (model, diffusion, --solver, --use_ddim, --seed, --batch_size, ...)
is accepted, except those the tuner sets itself (the searched settings, --num_samples, --out_dir).
Every evaluation is cached under --cache_dir by checkpoint SHA-256, so a rerun evaluates nothing
and an interrupted run resumes. See guided_diffusion/jobs/tuning.py and README "Tuning the sampler".
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
from guided_diffusion.jobs.sample import parse_sampling_flags, sampling_parser
from guided_diffusion.settings import OneLineErrorParser, finite_float, nonneg_int, str2bool
from guided_diffusion.sampler.time_shift import TS_RULES


def _list(parse, name):
    def parse_list(text):
        items = [t.strip() for t in str(text).split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{name}: give a comma list")
        return tuple(parse(t) for t in items)

    return parse_list


def _rule(text):
    if text not in TS_RULES:
        raise argparse.ArgumentTypeError(f"unknown rule {text!r}; choose from {', '.join(TS_RULES)}")
    return text


def tuner_parser():
    """The tuner's own flags, shown in --help above the sampling flags it passes on."""
    p = OneLineErrorParser(description=__doc__.split("\n")[0], add_help=False, allow_abbrev=False)
    p.add_argument("--ref_batch", default="", help="reference: the statistics file of evaluations/evaluator.py "
                   "--stats (with pool_3 features, needed for KID) or an image npz (its statistics are made once "
                   "and cached)")
    p.add_argument("--steps", type=int, default=None,
                   help="step count: the same as --timestep_respacing ddimN (give one of the two)")
    p.add_argument("--windows", type=_list(nonneg_int, "--windows"), default=(0, 10, 20, 40, 80),
                   help="time-shift windows to try; 0 = no shift (the plain sampler, always included)")
    p.add_argument("--cutoffs", type=_list(nonneg_int, "--cutoffs"), default=(200, 300, 500),
                   help="time-shift cutoffs to try")
    p.add_argument("--rules", type=_list(_rule, "--rules"), default=("adm", "adm-data", "offset"),
                   help=f"time-shift rules to try ({', '.join(TS_RULES)})")
    p.add_argument("--eps_scales", type=_list(finite_float, "--eps_scales"), default=(1.0, 1.002, 1.005),
                   help="epsilon-scaling values to try alone (1 = off)")
    p.add_argument("--dcw_lows", type=_list(finite_float, "--dcw_lows"), default=(0.0, -0.05, 0.05),
                   help="DCW low-band weights to try alone (0 = off)")
    p.add_argument("--rungs", type=_list(int, "--rungs"), default=(250, 1000),
                   help="sample budgets, increasing: every candidate at the first, survivors at the next")
    p.add_argument("--keep", default="1/3", help="fraction of each family kept for the next rung (e.g. 1/3, 0.5)")
    p.add_argument("--cache_dir", default="tune_cache",
                   help="folder for cached evaluations and samples (one subfolder per checkpoint SHA-256)")
    p.add_argument("--keep_samples", type=str2bool, default=False,
                   help="keep the samples of eliminated settings (default False: they are deleted after their rung)")
    p.add_argument("--json", default="", help="also write the report to this path as JSON (atomically)")
    p.add_argument("--inception_path", default=None, help="Inception weights for the evaluator")
    p.add_argument("--eval_device", default=None, help="device for the evaluator (default: cuda if available)")
    p.add_argument("--fid_method", default="eigh", choices=["eigh", "sqrtm"], help="matrix square root for FID")
    p.add_argument("--fid_bootstrap", type=int, default=200,
                   help="bootstrap rounds for the FID sd (0: none; then only KID's error decides)")
    p.add_argument("--kid_subsets", type=int, default=100, help="KID subsets (>= 1)")
    return p


def _given(argv, name):
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    own = tuner_parser()
    if "-h" in argv or "--help" in argv:
        full = sampling_parser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1])
        for action in own._actions:
            full._add_action(action)
        full.parse_args(["--help"])
    ours, rest = own.parse_known_args(argv)
    for name in tuning.SEARCHED_FLAGS + tuning.FIXED_FLAGS:
        if _given(rest, name):
            raise ValueError(f"--{name} is set by the tuner; search with --windows/--cutoffs/--rules/--eps_scales/"
                             "--dcw_lows and budget with --rungs/--cache_dir")
    if ours.steps is not None:
        if _given(rest, "timestep_respacing"):
            raise ValueError("give --steps or --timestep_respacing, not both")
        if ours.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {ours.steps}")
        rest += ["--timestep_respacing", f"ddim{ours.steps}"]
    elif not _given(rest, "timestep_respacing"):
        raise ValueError("give the step count: --steps N or --timestep_respacing (e.g. ddim10)")
    base_job, _ = parse_sampling_flags(rest)  # validates the sampling flags; the demo model if none
    keep = tuning.parse_keep(ours.keep)
    rungs = tuning.check_rungs(ours.rungs)
    if ours.fid_bootstrap < 0 or ours.fid_bootstrap == 1:
        raise ValueError("--fid_bootstrap must be 0 (off) or >= 2 rounds")
    if ours.json:
        folder = os.path.dirname(os.path.abspath(ours.json))
        if not os.path.isdir(folder):
            raise ValueError(f"--json {ours.json}: folder {folder} does not exist")
    space = tuning.SearchSpace(windows=ours.windows, cutoffs=ours.cutoffs, rules=ours.rules,
                               eps_scales=ours.eps_scales, dcw_lows=ours.dcw_lows)
    options = tuning.EvalOptions(kid_subsets=ours.kid_subsets, fid_bootstrap=ours.fid_bootstrap,
                                 fid_method=ours.fid_method, inception_path=ours.inception_path,
                                 device=ours.eval_device)
    try:
        report = tuning.tune(base_job, ours.ref_batch, ours.cache_dir, space=space, rungs=rungs, keep=keep,
                             eval_options=options, keep_samples=ours.keep_samples, base_argv=rest)
    except KeyboardInterrupt:  # outside a sampling run (which stops at a batch boundary itself)
        sys.stderr.write("tune_sampler.py: interrupted; finished evaluations are cached: rerun the same command "
                         "to resume\n")
        sys.exit(130)
    print(tuning.format_report(report), flush=True)
    if ours.json:
        write_text_atomic(ours.json, json.dumps(report, indent=1, sort_keys=True) + "\n")
        print(f"wrote {ours.json}")


if __name__ == "__main__":
    run_cli(main, errors=user_errors() + (InceptionWeightsError,))
