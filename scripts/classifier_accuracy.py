r"""Accuracy of a classifier on labelled images: how often guided samples show the class they were asked for.

    python scripts/classifier_accuracy.py --samples OUT/demo_fmnist32_ddim25step_cls2.npz \
        --classifier_path runs/clf_clean/model004000.pt --image_size 32 --image_channels 1 \
        --classifier_num_classes 10 <the classifier's other flags>

--samples: npz with arr_0 uint8 NHWC images (grey samples are stored RGB-replicated: channel 0 is
used when --image_channels 1) and arr_1 int64 labels (classifier_sample.py writes both; a data
set npz works too). The classifier is applied at --timestep (default 0: clean images). Prints
acc@1 (with its binomial standard error) and acc@5 over all images, and with --out_json writes
them with the per-class acc@1. For a fair score use a classifier that did NOT guide the samples
(e.g. one trained with --noised False or another --seed): the guiding classifier is biased
towards its own gradients. Bad inputs: one line, exit status 2.
"""

import argparse
import json
import math

import numpy as np
import torch

from guided_diffusion.checkpoint import CheckpointError, load_checkpoint_into
from guided_diffusion.classifier_train_util import top_k_correct
from guided_diffusion.io_util import write_text_atomic
from guided_diffusion.cli import run_cli
from guided_diffusion.script_util import classifier_from_configs
from guided_diffusion.settings import (
    ClassifierAccuracyConfig,
    ClassifierConfig,
    GuidanceConfig,
    ModelConfig,
    OneLineErrorParser,
    OutputConfig,
    add_settings,
    configs_from_args,
)


def create_parser():
    parser = OneLineErrorParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(parser, ClassifierAccuracyConfig)
    add_settings(parser, GuidanceConfig, only=("classifier_path",))
    add_settings(parser, OutputConfig, only=("batch_size",), defaults={"batch_size": 250})
    add_settings(parser, ClassifierConfig)
    return add_settings(parser, ModelConfig, only=("image_size", "image_channels"))


def accuracy(classifier, images, labels, *, image_channels, timestep=0, batch_size=250):
    """(acc@1 per image (N,) float, acc@5 per image (N,) float) of uint8 NHWC ``images``."""
    top1, top5 = [], []
    with torch.no_grad():
        for start in range(0, len(images), max(batch_size, 1)):
            arr = images[start : start + batch_size]
            x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1
            x = x[:, :image_channels]
            y = torch.from_numpy(labels[start : start + batch_size])
            logits = classifier(x, torch.full((len(x),), timestep, dtype=torch.long))
            top1.append(top_k_correct(logits, y, 1))
            top5.append(top_k_correct(logits, y, 5))
    return torch.cat(top1).numpy(), torch.cat(top5).numpy()


def main(argv=None):
    args = create_parser().parse_args(argv)
    clf_cfg, model_cfg = configs_from_args(args, ClassifierConfig, ModelConfig)
    if not args.samples or not args.classifier_path:
        raise ValueError("pass --samples (npz with arr_0 and arr_1) and --classifier_path")
    try:
        with np.load(args.samples, allow_pickle=False) as z:
            images, labels = z["arr_0"], z["arr_1"].astype(np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"--samples {args.samples}: needs arr_0 images and arr_1 labels ({exc})") from None
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[1:3] != (args.image_size, args.image_size) or images.shape[-1] < args.image_channels:
        raise ValueError(f"--samples {args.samples}: images of shape {images.shape[1:]}, expected "
                         f"({args.image_size}, {args.image_size}, >= {args.image_channels})")
    if args.class_grid and args.per_class < 1:
        raise ValueError(f"--per_class must be >= 1 for --class_grid, got {args.per_class}")
    if labels.min() < 0 or labels.max() >= clf_cfg.classifier_num_classes:
        raise ValueError(f"--samples {args.samples}: labels span {labels.min()}..{labels.max()}, outside the "
                         f"classifier's 0..{clf_cfg.classifier_num_classes - 1} (--classifier_num_classes)")
    classifier = classifier_from_configs(clf_cfg, model_cfg)
    try:
        load_checkpoint_into(classifier, args.classifier_path)
    except CheckpointError as exc:
        raise CheckpointError(str(exc).replace("--model_path", "--classifier_path")) from None
    classifier.eval()
    top1, top5 = accuracy(classifier, images, labels, image_channels=args.image_channels, timestep=args.timestep,
                          batch_size=args.batch_size)
    n = len(top1)
    acc = float(top1.mean())
    result = {
        "samples": args.samples,
        "num_images": n,
        "acc@1": acc,
        "acc@1_stderr": math.sqrt(acc * (1 - acc) / n),
        "acc@5": float(top5.mean()),
        "per_class_acc@1": {int(c): float(top1[labels == c].mean()) for c in np.unique(labels)},
        "classifier_path": args.classifier_path,
        "timestep": args.timestep,
    }
    print(f"acc@1 {acc:.4f} +- {result['acc@1_stderr']:.4f}, acc@5 {result['acc@5']:.4f} over {n} images "
          f"({args.samples})", flush=True)
    if args.out_json:
        write_text_atomic(args.out_json, json.dumps(result, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.out_json}", flush=True)
    if args.class_grid:
        from guided_diffusion.jobs.figures import class_rows, save_grid_png

        rows = class_rows(images, labels, args.per_class, clf_cfg.classifier_num_classes)
        if rows.shape[-1] == 1:
            rows = np.repeat(rows, 3, axis=-1)
        save_grid_png(args.class_grid, rows, nrow=args.per_class)
        print(f"wrote {args.class_grid}", flush=True)
    return result


if __name__ == "__main__":
    run_cli(main)
