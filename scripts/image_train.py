r"""Train an ADM diffusion model on a folder of images or an .npz (upstream flags, exact resume).

One process (the bundled demo model's architecture, guided_diffusion/assets/demo_fmnist32.json, on
Fashion-MNIST made by datasets/fashion_mnist.py; it logs every --log_interval steps):
    python scripts/image_train.py --data_dir data/fmnist_train32.npz --out_dir runs/fmnist32 \
        --image_size 32 --image_channels 1 --num_channels 32 --num_res_blocks 2 \
        --attention_resolutions 16,8 --num_head_channels 32 --resblock_updown True \
        --use_new_attention_order True --learn_sigma True --noise_schedule cosine --dropout 0.1 \
        --batch_size 256 --lr 4e-4 --ema_rate 0.9995 --save_interval 200
Data parallel (each rank gets --batch_size; DDP with nccl on GPUs, gloo on the CPU):
    mpiexec -n 2 python scripts/image_train.py ...      (or torchrun --nproc_per_node 2 ...)
Resume exactly where a run stopped (ema/opt files are found beside the model file):
    python scripts/image_train.py <same flags> --resume_checkpoint runs/fmnist32/model000200.pt
On SIGTERM or SIGINT (a scheduler's preemption, Ctrl-C) the step in progress is finished, the
checkpoint of that step is saved (model, ema, opt, as at a save interval), one line with the
resume command is printed, and the exit status is 143 (SIGTERM) or 130 (SIGINT); a second signal
stops at once. With several ranks a signal on any rank stops all of them after the same step.

Writes to --out_dir (rank 0 only, atomically): model{step:06d}.pt (float32 UNet state_dict, loads
strictly in scripts/image_sample_1gpu.py --model_path), ema_{rate}_{step:06d}.pt (same format,
the EMA weights: sample from these), opt{step:06d}.pt (optimizer, loss scale, schedule sampler
state), args.json, log.txt and progress.csv (loss, loss per timestep quartile, grad norm, lr, ...).
"""

import argparse

import torch

from guided_diffusion import dist_util, logger
from guided_diffusion.image_datasets import ImageDataset, StepBatcher
from guided_diffusion.cli import run_cli
from guided_diffusion.script_util import args_to_dict, create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.settings import MODEL_DIFFUSION_GROUPS, TrainConfig, add_settings
from guided_diffusion.train_util import (
    TrainLoop,
    begin_run,
    diffusion_train_loop_kwargs,
    finish_run,
    validate_train_args,
)


def create_argparser():
    """The training flags (TrainConfig) and every model/diffusion flag, from their declarations."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    return add_settings(parser, TrainConfig, *MODEL_DIFFUSION_GROUPS)


def validate_args(args):
    validate_train_args(args)


def main(argv=None):
    args = create_argparser().parse_args(argv)
    validate_args(args)
    info = begin_run(args)

    torch.manual_seed(args.seed)  # the same initialisation on every rank (rank 0's is broadcast too)
    model, diffusion = create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults().keys()))
    model.to(dist_util.dev())
    logger.log(f"model: {sum(p.numel() for p in model.parameters()):,} parameters")

    dataset = ImageDataset(
        args.data_dir, args.image_size, class_cond=args.class_cond, image_channels=args.image_channels
    )
    data = StepBatcher(
        dataset, args.batch_size, seed=args.seed, shard=info.rank, num_shards=info.world_size,
        random_flip=args.random_flip,
    )
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
