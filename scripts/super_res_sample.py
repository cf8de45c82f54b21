r"""Upsample low-resolution images with a super-resolution diffusion model (any sampler, time shift included).

64 -> 256 ImageNet upsampler (guided-diffusion README flags), on base samples from a 64x64 model:
    python scripts/super_res_sample.py --model_path 64_256_upsampler.pt --base_samples base_64.npz \
        --attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --large_size 256 \
        --small_size 64 --learn_sigma True --noise_schedule linear --num_channels 192 --num_heads 4 \
        --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True \
        --timestep_respacing ddim25 --use_ddim True --do_time_shift True --window 40 --cutoff 300 \
        --num_samples 1000 --batch_size 8 --out_dir OUT
writes OUT/adm_cifar_ddim25step_40win_300cut_sr64to256.npz: arr_0 uint8 (N, 256, 256, 3), and
arr_1 (the base labels) for class-conditional models.

--base_samples: npz with arr_0 uint8 (M, small_size, small_size, C) and, for class-conditional
models, arr_1 labels (upstream: the output of image_sample.py / classifier_sample.py). Sample k
upsamples base image k mod M (upstream cycles through the base images the same way); its noise
comes from (--seed, k). Every sampler option of image_sample.py applies (--use_ddim, --solver, the
time shift, ...). Multi-process (mpiexec / torchrun), resumable parts, one-line errors,
SIGTERM/SIGINT: as image_sample.py; the base samples' SHA-256 is part of the resume metadata.
"""

import argparse

from guided_diffusion.cli import run_cli
from guided_diffusion.jobs.sample import SUPER_RES_GROUPS, parse_sampling_flags, run_sampling_on_ranks
from guided_diffusion.settings import (
    SAMPLING_GROUPS,
    BaseSamplesConfig,
    OneLineErrorParser,
    SuperResConfig,
    add_settings,
)


def create_parser():
    """image_sample.py's flags (but --image_size: it is --large_size) plus --large_size, --small_size,
    --base_samples."""
    parser = OneLineErrorParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_settings(parser, SuperResConfig, BaseSamplesConfig, *SAMPLING_GROUPS, skip=("image_size",))


def main(argv=None):
    job, _ = parse_sampling_flags(argv, parser=create_parser(), extras=SUPER_RES_GROUPS, demo_model=False)
    return run_sampling_on_ranks(job)


if __name__ == "__main__":
    run_cli(main)
