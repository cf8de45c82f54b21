r"""Bits/dim of images under a diffusion model's variational bound (upstream's image_nll.py, resumable).

    python scripts/image_nll.py --model_path runs/fmnist32/ema_0.9995_002000.pt \
        --data_dir fmnist_test32.npz --num_samples 1000 --batch_size 50 --out_dir runs/nll \
        --image_size 32 --image_channels 1 --num_channels 32 ...(the model's training flags)
    mpiexec -n 4 python scripts/image_nll.py <same flags>      (or torchrun; images split by rank)

Per image: prior term KL(q(x_T | x_0) || N(0, I)) plus the S terms of the bound (KL of each reverse
step, the discretised decoder NLL at t = 0), each with x_t drawn from (--seed, image index, t);
upstream's calc_bpd_loop. The bound needs S network calls per image (S = --diffusion_steps, or the
respaced count with --timestep_respacing); --t_strata K estimates the same bound, unbiased, from K+1
calls per image (stratified over t; the variance shows in the standard error), for a CPU budget.
Prints "done N of M images: bpd=..." per round and the final mean with its standard error; writes to
--out_dir: bpd.npz (per-image total_bpd, prior_bpd), vb_terms.npz / mse_terms.npz /
xstart_mse_terms.npz (upstream's per-timestep means, decreasing t; vb_strata.npz with --t_strata)
and bpd.json (summary and settings). Finished batches are kept in bpd.npz.parts/: rerun the same
command to resume (the result does not change); SIGTERM/SIGINT stop at a batch boundary (exit
143/130). Bad inputs give one line and exit status 2.
"""

import argparse

from guided_diffusion import dist_util
from guided_diffusion.cli import run_cli
from guided_diffusion.jobs.nll import NllJob, run_nll
from guided_diffusion.settings import (
    DiffusionConfig,
    ModelConfig,
    NllConfig,
    OneLineErrorParser,
    add_settings,
    configs_from_args,
)


def create_parser():
    parser = OneLineErrorParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_settings(parser, NllConfig, ModelConfig, DiffusionConfig)


def main(argv=None):
    args = create_parser().parse_args(argv)
    job = NllJob(*configs_from_args(args, NllConfig, ModelConfig, DiffusionConfig))
    dist_util.setup_dist(backend="gloo")
    try:
        return run_nll(job, device=dist_util.dev())
    finally:
        dist_util.cleanup()


if __name__ == "__main__":
    run_cli(main)
