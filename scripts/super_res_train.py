r"""Train a super-resolution diffusion model (SuperResModel: the UNet also sees the upsampled low-res image).

64 -> 256 ImageNet upsampler (guided-diffusion README flags):
    mpiexec -n N python scripts/super_res_train.py --data_dir train/ --out_dir runs/sr256 \
        --large_size 256 --small_size 64 --attention_resolutions 32,16,8 --class_cond True \
        --diffusion_steps 1000 --learn_sigma True --noise_schedule linear --num_channels 192 \
        --num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True \
        --use_scale_shift_norm True --batch_size 16 --lr 1e-4 --save_interval 10000
Every step takes a batch of --large_size images (from --data_dir: a folder or an .npz), makes the
conditioning image by area interpolation down to --small_size (upstream's load_superres_data) and
trains on the usual diffusion loss of the large image given it. Model flags: as image_train.py
(upstream's channel_mult by large_size: 64 -> 1,2,3,4, 256/512 -> 1,1,2,2,4,4; --channel_mult
overrides, other sizes take the UNet default for that size). Exact resume, data parallel, atomic
model/ema/opt checkpoints, SIGTERM/SIGINT handling: as image_train.py. Sample with
scripts/super_res_sample.py --base_samples LOWRES.npz and the same model flags.
"""

import argparse

import torch

from guided_diffusion import dist_util, logger
from guided_diffusion.image_datasets import ImageDataset, LowResBatcher, StepBatcher
from guided_diffusion.cli import run_cli
from guided_diffusion.script_util import sr_create_model_and_diffusion
from guided_diffusion.settings import (
    DiffusionConfig,
    ModelConfig,
    OneLineErrorParser,
    SuperResConfig,
    TimeShiftConfig,
    TrainConfig,
    add_settings,
    field_names,
)
from guided_diffusion.train_util import (
    TrainLoop,
    begin_run,
    diffusion_train_loop_kwargs,
    finish_run,
    validate_train_args,
)


def create_argparser():
    """The training flags, --large_size / --small_size and every model/diffusion flag but image_size."""
    parser = OneLineErrorParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_settings(parser, TrainConfig, SuperResConfig, ModelConfig, DiffusionConfig, TimeShiftConfig,
                        skip=("image_size",))


def model_kwargs_of(args):
    names = [n for n in field_names(ModelConfig) + field_names(DiffusionConfig) + field_names(TimeShiftConfig)
             if n != "image_size"]
    return {k: getattr(args, k) for k in dict.fromkeys(names)}


def main(argv=None):
    args = create_argparser().parse_args(argv)
    validate_train_args(args)
    if args.small_size >= args.large_size:
        raise ValueError(f"--small_size ({args.small_size}) must be smaller than --large_size ({args.large_size})")
    dataset = ImageDataset(args.data_dir, args.large_size, class_cond=args.class_cond,
                           image_channels=args.image_channels)
    info = begin_run(args)

    torch.manual_seed(args.seed)
    model, diffusion = sr_create_model_and_diffusion(args.large_size, args.small_size, **model_kwargs_of(args))
    model.to(dist_util.dev())
    logger.log(f"super-resolution model {args.small_size} -> {args.large_size}: "
               f"{sum(p.numel() for p in model.parameters()):,} parameters")
    data = LowResBatcher(StepBatcher(dataset, args.batch_size, seed=args.seed, shard=info.rank,
                                     num_shards=info.world_size, random_flip=args.random_flip), args.small_size)
    logger.log(f"data: {len(dataset)} images from {args.data_dir}, {data.steps_per_epoch:.1f} steps per epoch")

    loop = TrainLoop(
        model=model,
        diffusion=diffusion,
        data=data,
        **diffusion_train_loop_kwargs(args, diffusion, info),
    )
    return finish_run(loop, info.world_size)


if __name__ == "__main__":
    run_cli(main)
