"""Trace a solver's moves on the bundled demo model: per loop step, the state's mean and largest |x|
and, for every move the step makes, the share of pixels whose data prediction x0* lies outside
[-1, 1] (before the clip) and its largest |x0*| (see ``guided_diffusion.sampler.solvers``, "Clipping").

    python tools/transfer_trace.py --solver s-pndm --timestep_respacing 10 [--unclipped True]

``--unclipped True`` replays the moves without the clip through x0* (the solvers before it had one).
Samples: the first ``--num`` of ``--seed`` (the sampling scripts' per-sample noise).
"""

import argparse

import torch

from guided_diffusion.cli import run_cli
from guided_diffusion.jobs.sample import build_model_and_diffusion, parse_sampling_flags
from guided_diffusion.sampler import solvers
from guided_diffusion.sampler.generate import SampleNoise
from guided_diffusion.sampler.loop import sample_loop_progressive
from guided_diffusion.settings import SAMPLING_GROUPS, add_settings, str2bool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_settings(parser, *SAMPLING_GROUPS, only=("solver", "timestep_respacing", "seed"),
                 defaults={"solver": "s-pndm", "timestep_respacing": "10", "seed": 7})
    parser.add_argument("--num", type=int, default=4, help="number of samples traced (default 4)")
    parser.add_argument("--unclipped", type=str2bool, default=False,
                        help="replay the moves without the clip through x0* (default False)")
    args = parser.parse_args(argv)
    job, _ = parse_sampling_flags(["--use_ddim", "True", "--solver", args.solver,
                                   "--timestep_respacing", args.timestep_respacing,
                                   "--seed", str(args.seed)])
    model, diffusion = build_model_and_diffusion(job, torch.device("cpu"))
    moves = []
    clip_through_x0 = solvers._clip_through_x0

    def traced(x_next, x, x0, a, a_next, clip_denoised):
        moves.append((float((x0.abs() > 1).double().mean()), float(x0.abs().max())))
        return x_next if args.unclipped else clip_through_x0(x_next, x, x0, a, a_next, clip_denoised)

    solvers._clip_through_x0 = traced
    shape = (job.model.image_channels, job.model.image_size, job.model.image_size)
    x_T = SampleNoise(args.seed).normal(torch.arange(args.num), 0, shape)
    print(f"{args.solver} on {args.timestep_respacing!r}, {'unclipped' if args.unclipped else 'clipped'} moves")
    for out in sample_loop_progressive(diffusion, model, x_T.shape, job.sampler_obj(), noise=x_T):
        x = out["sample"]
        text = "; ".join(f"x0* outside {share:.2f}, max {top:.3g}" for share, top in moves)
        print(f"t = {out['timestep']:4d}: |x| mean {float(x.abs().mean()):8.3g} max {float(x.abs().max()):8.3g}"
              f"  moves: {text or '-'}")
        moves.clear()


if __name__ == "__main__":
    run_cli(main)
