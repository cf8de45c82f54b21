r"""Train the noisy-image classifier for classifier guidance (upstream's flags, exact resume).

ImageNet 64x64 (guided-diffusion README flags):
    mpiexec -n N python scripts/classifier_train.py --data_dir train/ --val_data_dir val/ \
        --iterations 300000 --anneal_lr True --batch_size 256 --lr 3e-4 --save_interval 10000 \
        --weight_decay 0.05 --image_size 64 --classifier_attention_resolutions 32,16,8 \
        --classifier_depth 4 --classifier_width 128 --classifier_pool attention \
        --classifier_resblock_updown True --classifier_use_scale_shift_norm True --out_dir runs/clf64
A small grey Fashion-MNIST classifier (10 classes, 32x32) for the bundled demo model:
    python scripts/classifier_train.py --data_dir fmnist_train32.npz --val_data_dir fmnist_test32.npz \
        --image_size 32 --image_channels 1 --classifier_num_classes 10 --classifier_width 32 \
        --classifier_depth 1 --classifier_attention_resolutions 8 --classifier_num_head_channels 32 \
        --classifier_pool attention --noise_schedule cosine --batch_size 64 --iterations 4000 \
        --anneal_lr True --out_dir runs/clf_fmnist
The diffusion flags (--diffusion_steps, --noise_schedule, ...) must be those of the diffusion model
the classifier will guide: they set the noise levels x_t it learns to classify.
Resume exactly: the same flags plus --resume_checkpoint runs/clf64/model010000.pt (opt beside it).

Each step: x_t = q_sample(x_0, t) at t from --schedule_sampler (clean images at t = 0 with
--noised False), cross-entropy, AdamW. Logged (stdout, log.txt, progress.csv): train_loss,
train_acc@1, train_acc@5 and each by timestep quarter (_q0 = least noisy .. _q3), and with
--val_data_dir the same for one held-out batch every --eval_interval steps (val_*). Writes to
--out_dir (rank 0, atomically): model{step:06d}.pt (the classifier state_dict, for
classifier_sample.py --classifier_path), opt{step:06d}.pt, args.json. Labels must lie in
0..classifier_num_classes-1 (npz: arr_1; folder: the sorted file-name prefixes).
SIGTERM / SIGINT: the step in progress is finished and saved, the resume command printed, exit 143 / 130.
"""

import argparse

import torch

from guided_diffusion import dist_util, io_util, logger
from guided_diffusion.classifier_train_util import ClassifierTrainLoop
from guided_diffusion.image_datasets import ImageDataset, StepBatcher
from guided_diffusion.cli import run_cli
from guided_diffusion.resample import create_named_schedule_sampler
from guided_diffusion.script_util import create_classifier_and_diffusion
from guided_diffusion.settings import (
    ClassifierConfig,
    ClassifierTrainConfig,
    DiffusionConfig,
    ModelConfig,
    OneLineErrorParser,
    TimeShiftConfig,
    add_settings,
    field_names,
)
from guided_diffusion.train_util import begin_run, finish_run

SHARED_MODEL_FLAGS = ("image_size", "image_channels")  # shared with the diffusion model


def create_argparser():
    """The training flags, the classifier flags, image_size / image_channels and the diffusion flags."""
    parser = OneLineErrorParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(parser, ClassifierTrainConfig, ClassifierConfig)
    add_settings(parser, ModelConfig, only=SHARED_MODEL_FLAGS)
    return add_settings(parser, DiffusionConfig, TimeShiftConfig, skip=SHARED_MODEL_FLAGS)


def classifier_and_diffusion_kwargs(args):
    names = field_names(ClassifierConfig) + list(SHARED_MODEL_FLAGS) + field_names(DiffusionConfig) + \
        field_names(TimeShiftConfig)
    return {k: getattr(args, k) for k in dict.fromkeys(names)}


def validate_args(args):
    if not args.data_dir:
        raise ValueError("--data_dir is empty: pass a folder of labelled images or an .npz with arr_0 and arr_1")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.microbatch == 0 or args.microbatch < -1:
        raise ValueError(f"--microbatch must be -1 (no split) or >= 1, got {args.microbatch}")
    for name in ("log_interval", "eval_interval"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("save_interval", "max_steps"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.iterations == 0 and args.max_steps == 0:
        raise ValueError("--iterations 0 and --max_steps 0 would train forever: set one of them")
    if args.resume_checkpoint and not io_util.isfile(args.resume_checkpoint):
        raise FileNotFoundError(f"--resume_checkpoint {args.resume_checkpoint}: no such file")


def labelled_dataset(path, args, flag):
    ds = ImageDataset(path, args.image_size, class_cond=True, image_channels=args.image_channels)
    labels = ds.labels
    if int(labels.max()) >= args.classifier_num_classes:
        raise ValueError(f"{flag} {path}: labels go up to {int(labels.max())}, but --classifier_num_classes is "
                         f"{args.classifier_num_classes}")
    return ds


def main(argv=None):
    args = create_argparser().parse_args(argv)
    validate_args(args)
    train_set = labelled_dataset(args.data_dir, args, "--data_dir")
    val_set = labelled_dataset(args.val_data_dir, args, "--val_data_dir") if args.val_data_dir else None
    torch.manual_seed(args.seed)  # the same initialisation on every rank (rank 0's is broadcast too)
    model, diffusion = create_classifier_and_diffusion(**classifier_and_diffusion_kwargs(args))

    info = begin_run(args)
    model.to(dist_util.dev())
    logger.log(f"classifier: {sum(p.numel() for p in model.parameters()):,} parameters, "
               f"{args.classifier_num_classes} classes")
    data = StepBatcher(train_set, args.batch_size, seed=args.seed, shard=info.rank, num_shards=info.world_size,
                       random_flip=args.random_flip)
    val_data = None
    if val_set is not None:
        val_data = StepBatcher(val_set, args.batch_size, seed=args.seed + 1, shard=info.rank,
                               num_shards=info.world_size, random_flip=False)
    logger.log(f"data: {len(train_set)} images from {args.data_dir}"
               + (f"; held out: {len(val_set)} from {args.val_data_dir}" if val_set is not None else ""))

    loop = ClassifierTrainLoop(
        model=model,
        diffusion=diffusion,
        data=data,
        batch_size=args.batch_size,
        microbatch=args.microbatch,
        lr=args.lr,
        log_interval=args.log_interval,
        save_interval=args.save_interval,
        resume_checkpoint=args.resume_checkpoint,
        use_fp16=args.classifier_use_fp16,
        schedule_sampler=create_named_schedule_sampler(args.schedule_sampler, diffusion),
        weight_decay=args.weight_decay,
        max_steps=args.max_steps,
        out_dir=args.out_dir,
        seed=args.seed,
        rank=info.rank,
        world_size=info.world_size,
        noised=args.noised,
        iterations=args.iterations,
        anneal_lr=args.anneal_lr,
        val_data=val_data,
        eval_interval=args.eval_interval,
    )
    return finish_run(loop, info.world_size, ema_rates=[])


if __name__ == "__main__":
    run_cli(main)
