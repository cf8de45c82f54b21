"""Fit K-step time grids to a model's own sampling trajectories (GITS, Chen et al. 2024), one file per K.

    python scripts/optimize_grid.py --grid_steps 5,10,20 --out_dir grids

(no --model_path and no model flags: the bundled demo model) runs --num_trajectories teacher
trajectories with --teacher_solver on --fine_grid, builds the cost of one --grid_solver step between
every pair of fine-grid times against the teacher, and writes OUT_DIR/grid_<solver>_<K>.json for each K:
sample with --timestep_respacing file:OUT_DIR/grid_ddim_10.json (the checkpoint must be the same one).
The teacher is cached under OUT_DIR/teacher-<checkpoint hash>-<settings hash>/: a rerun with other
--grid_steps reuses it. SIGTERM / SIGINT stop after the batch in flight and print the resume command.
See docs/grids.md.
"""

import argparse

from guided_diffusion.cli import run_cli
from guided_diffusion.jobs.grid_opt import optimize_grids
from guided_diffusion.jobs.sample import SAMPLING_GROUPS, parse_sampling_flags
from guided_diffusion.settings import (GridOptConfig, OneLineErrorParser, add_argument, add_settings,
                                       configs_from_args, declared)

# Sampling flags that do not apply: what is sampled and how is decided by the GridOptConfig flags.
NOT_USED = ("num_samples", "batch_size", "data_type", "model_type", "grid", "grid_size", "compare_grid",
            "keep_parts", "classifier_scale", "classifier_depth", "classifier_path", "use_ddim", "eta", "solver",
            "eps_scale", "eps_scale_k", "dcw_low", "dcw_high", "save_trace", "do_time_shift", "window", "cutoff",
            "ts_rule", "timestep_respacing")


def parser():
    p = OneLineErrorParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(p, *SAMPLING_GROUPS, skip=NOT_USED)
    batch = declared(*SAMPLING_GROUPS)["batch_size"]
    add_argument(p, "batch_size", 64, batch,
                 help=batch.metadata["help"] + "; here: teacher trajectories per forward pass (one cache part each)")
    return add_settings(p, GridOptConfig)


def main(argv=None):
    job, args = parse_sampling_flags(argv, parser=parser())
    (cfg,) = configs_from_args(args, GridOptConfig)
    return optimize_grids(job, cfg, progress=job.run.progress)


if __name__ == "__main__":
    run_cli(main)
