"""Fit K-step time grids to a model's own sampling trajectories (GITS, Chen et al. 2024), one file per K.

    python scripts/optimize_grid.py --steps 5,10,20 --out_dir grids

(no --model_path and no model flags: the bundled demo model) runs --num_trajectories teacher
trajectories with --teacher_solver on --fine_grid, builds the cost of one --grid_solver step between
every pair of fine-grid times against the teacher, and writes OUT_DIR/grid_<solver>_<K>.json for each K:
sample with --timestep_respacing file:OUT_DIR/grid_ddim_10.json (the checkpoint must be the same one).
The teacher is cached under OUT_DIR/teacher-<checkpoint hash>-<settings hash>/: a rerun with other
--steps reuses it. SIGTERM / SIGINT stop after the batch in flight and print the resume command.
See docs/grids.md.
"""

from guided_diffusion.cli import run_cli
from guided_diffusion.jobs.grid_opt import optimize_grids
from guided_diffusion.jobs.sample import parse_sampling_flags, sampling_parser
from guided_diffusion.settings import GridOptConfig, add_settings, configs_from_args


def main(argv=None):
    parser = sampling_parser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1])
    add_settings(parser, GridOptConfig)
    parser.set_defaults(batch_size=64)
    job, args = parse_sampling_flags(argv, parser=parser)
    (cfg,) = configs_from_args(args, GridOptConfig)
    return optimize_grids(job, cfg, progress=job.run.progress)


if __name__ == "__main__":
    run_cli(main)
