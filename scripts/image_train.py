"""Train an ADM diffusion model on a folder of images or an .npz (upstream flags, exact resume).

One process:
    python scripts/image_train.py --data_dir /work/data/fmnist_train32.npz --out_dir runs/fmnist \
        --image_size 32 --image_channels 1 --num_channels 32 --channel_mult 1,2,2 \
        --num_res_blocks 2 --attention_resolutions 8 --resblock_updown True --learn_sigma True \
        --noise_schedule cosine --batch_size 64 --lr 2e-4 --lr_anneal_steps 20000
Data parallel (each rank gets --batch_size; DDP with nccl on GPUs, gloo on the CPU):
    mpiexec -n 2 python scripts/image_train.py ...      (or torchrun --nproc_per_node 2 ...)
Resume exactly where a run stopped (ema/opt files are found beside the model file):
    python scripts/image_train.py <same flags> --resume_checkpoint runs/fmnist/model010000.pt
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
import json
import os

import torch

from guided_diffusion import dist_util, job_control, logger
from guided_diffusion.image_datasets import ImageDataset, StepBatcher
from guided_diffusion.io_util import run_cli, write_text_atomic
from guided_diffusion.resample import create_named_schedule_sampler
from guided_diffusion.script_util import args_to_dict, create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.settings import MODEL_DIFFUSION_GROUPS, TrainConfig, add_settings
from guided_diffusion.train_util import TrainLoop, checkpoint_paths, validate_train_args


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
    info = dist_util.setup_dist()
    logger.configure(args.out_dir, rank=info.rank)
    if info.rank == 0:
        write_text_atomic(os.path.join(args.out_dir, "args.json"), json.dumps(vars(args), indent=1, sort_keys=True))
    logger.log(f"{info.world_size} process(es), device {dist_util.dev()}")

    torch.manual_seed(args.seed)  # the same initialisation on every rank (rank 0's is broadcast too)
    model, diffusion = create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults().keys()))
    model.to(dist_util.dev())
    logger.log(f"model: {sum(p.numel() for p in model.parameters()):,} parameters")
    schedule_sampler = create_named_schedule_sampler(args.schedule_sampler, diffusion)

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
        batch_size=args.batch_size,
        microbatch=args.microbatch,
        lr=args.lr,
        ema_rate=args.ema_rate,
        ema_warmup=args.ema_warmup,
        log_interval=args.log_interval,
        save_interval=args.save_interval,
        resume_checkpoint=args.resume_checkpoint,
        use_fp16=args.use_fp16,
        fp16_scale_growth=args.fp16_scale_growth,
        schedule_sampler=schedule_sampler,
        weight_decay=args.weight_decay,
        lr_anneal_steps=args.lr_anneal_steps,
        max_steps=args.max_steps,
        out_dir=args.out_dir,
        seed=args.seed,
        rank=info.rank,
        world_size=info.world_size,
    )
    logger.log(f"training from step {loop.step}")
    with job_control.StopSignals(what="saving a checkpoint after this step") as signals:
        loop.run_loop(should_stop=lambda: job_control.stop_requested_anywhere(signals))
    if loop.stopped_by:
        model_path = checkpoint_paths(loop.out_dir, loop.step, loop.ema_rate)["model"]
        message = (f"stopped by {loop.stopped_by.name} at step {loop.step}: saved {model_path} (+ opt, ema); "
                   f"resume with: {job_control.resume_command(info.world_size, {'--resume_checkpoint': model_path})}")
        logger.log(message)
        logger.close()
        try:
            job_control.preempt(loop.stopped_by, message)
        finally:
            dist_util.cleanup()
    logger.log(f"done at step {loop.step}")
    logger.close()
    dist_util.barrier()
    dist_util.cleanup()
    return loop


if __name__ == "__main__":
    run_cli(main)
