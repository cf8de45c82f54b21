"""The sampling command shared by ``scripts/image_sample_1gpu.py`` and ``scripts/image_sample.py``.

One parser (upstream's flags plus ``--seed``, ``--eta``, ``--ts_rule``, ``--grid``) and one
``run_sampling`` function; the scripts only choose how processes are set up.
"""

import argparse
import os
import sys
import tempfile

import numpy as np
import torch

from .checkpoint import CheckpointError, load_checkpoint_into
from .generate import NonFiniteSampleError, generate_samples
from .script_util import (
    add_dict_to_argparser,
    args_to_dict,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
    str2bool,
)

SCRIPT_DEFAULTS = dict(
    clip_denoised=True,
    num_samples=10000,
    batch_size=16,
    use_ddim=False,
    model_path="",
    out_dir=".",
    data_type="cifar",
    model_type="adm",
    classifier_scale=1.0,
    classifier_depth=4,
    classifier_path=".",
    gpu_id="",
    seed=0,
    eta=0.0,
    grid="",
    grid_size=64,
    attention="sdpa",
    progress=True,
)

SCRIPT_HELP = {
    "clip_denoised": "clip the predicted x0 to [-1, 1] at every step",
    "num_samples": "number of images to generate",
    "batch_size": "images per forward pass (per process)",
    "use_ddim": "DDIM (True) or ancestral DDPM (False) sampling; time shift works with both",
    "model_path": "checkpoint (.pt state_dict) to sample from",
    "out_dir": "output folder (created if missing)",
    "data_type": "data-set name, used only in the output file name",
    "model_type": "model name, used only in the output file name",
    "classifier_scale": "accepted for upstream compatibility; unused by this script",
    "classifier_depth": "accepted for upstream compatibility; unused by this script",
    "classifier_path": "accepted for upstream compatibility; unused by this script",
    "gpu_id": "value for CUDA_VISIBLE_DEVICES, set before CUDA starts ('' leaves it alone)",
    "seed": "seed: image k depends only on (seed, k), whatever the batch size or process count",
    "eta": "DDIM eta (0 = deterministic DDIM)",
    "grid": "also write a PNG grid of the first samples to this path",
    "grid_size": "number of samples in the --grid PNG",
    "attention": "attention kernel: sdpa (fused) or math (upstream einsum)",
    "progress": "show a progress bar",
}


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2)."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def create_argparser(description=None):
    parser = OneLineErrorParser(description=description)
    add_dict_to_argparser(parser, SCRIPT_DEFAULTS, help=SCRIPT_HELP)
    add_dict_to_argparser(parser, model_and_diffusion_defaults())
    for action in parser._actions:
        if action.dest == "attention":
            action.choices = ("sdpa", "math")
    return parser


def output_filename(args):
    """Upstream's name: ``{model_type}_{data_type}_{respacing}step[_{window}win_{cutoff}cut].npz``.

    ``_pndm`` is appended for ``--ts_rule pndm`` so the two rules never overwrite each other.
    """
    name = f"{args.model_type}_{args.data_type}_{args.timestep_respacing}step"
    if args.do_time_shift:
        name += f"_{args.window}win_{args.cutoff}cut"
        if args.ts_rule != "adm":
            name += f"_{args.ts_rule}"
    return name + ".npz"


def save_npz_atomic(path, *arrays):
    """``np.savez(path, *arrays)`` through a temporary file in the same folder, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    os.close(fd)
    try:
        np.savez(tmp, *arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_grid_png(path, images, nrow=None):
    """A PNG grid of (N, H, W, 3) uint8 images, written atomically."""
    from PIL import Image

    n, h, w, c = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    grid = np.zeros((ncol * (h + 2) + 2, nrow * (w + 2) + 2, c), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, nrow)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + q * (w + 2) : 2 + q * (w + 2) + w] = images[k]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
    os.close(fd)
    try:
        Image.fromarray(grid).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def validate_args(args):
    """One-line errors for flag values that cannot work (raised before any work)."""
    if args.num_samples < 1:
        raise ValueError(f"--num_samples must be >= 1, got {args.num_samples}")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.eta < 0:
        raise ValueError(f"--eta must be >= 0, got {args.eta}")
    if not args.use_ddim and args.eta != 0:
        raise ValueError("--eta applies to DDIM only: pass --use_ddim True or drop --eta")


def build_model_and_diffusion(args, device, checkpoint_bytes=None):
    """Create the model from the flags, load ``--model_path`` strictly, move to ``device``."""
    model, diffusion = create_model_and_diffusion(
        **args_to_dict(args, model_and_diffusion_defaults().keys())
    )
    load_checkpoint_into(model, args.model_path, data=checkpoint_bytes)
    model.to(device)
    if args.use_fp16:
        model.convert_to_fp16()
    model.set_attention_impl(args.attention)
    model.eval()
    return model, diffusion


def sampler_settings(args):
    """A short description of the sampler, for error messages and logs."""
    text = f"{'DDIM' if args.use_ddim else 'DDPM'} respacing={args.timestep_respacing or 'all'}"
    if args.use_ddim and args.eta:
        text += f" eta={args.eta}"
    if args.do_time_shift:
        text += f" time shift rule={args.ts_rule} window={args.window} cutoff={args.cutoff}"
    return text + f" seed={args.seed}"


def run_single_process(args, device):
    """Generate ``num_samples`` images in this process and write the npz (and grid). Returns the path."""
    validate_args(args)
    model, diffusion = build_model_and_diffusion(args, device)
    channels = args.image_channels
    batches = generate_samples(
        model,
        diffusion,
        range(args.num_samples),
        batch_size=args.batch_size,
        device=device,
        shape=(channels, args.image_size, args.image_size),
        seed=args.seed,
        sampler="ddim" if args.use_ddim else "ddpm",
        eta=args.eta,
        clip_denoised=args.clip_denoised,
        num_classes=model.num_classes,
        settings=sampler_settings(args),
    )
    images, labels = [], []
    if args.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=args.num_samples, unit="img", desc="sampling")
    for batch in batches:
        images.append(batch.images)
        if batch.labels is not None:
            labels.append(batch.labels)
        if args.progress:
            bar.update(len(batch.indices))
    if args.progress:
        bar.close()
    arr = np.concatenate(images, axis=0)
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, output_filename(args))
    if labels:
        save_npz_atomic(path, arr, np.concatenate(labels, axis=0).astype(np.int64))
    else:
        save_npz_atomic(path, arr)
    if args.grid:
        save_grid_png(args.grid, arr[: args.grid_size])
    return path


USER_ERRORS = (CheckpointError, NonFiniteSampleError, ValueError, FileNotFoundError, PermissionError)


def run_cli(main, argv=None):
    """Run ``main(argv)``; user errors become one line on stderr and exit status 2."""
    try:
        return main(argv)
    except USER_ERRORS as exc:
        prog = os.path.basename(sys.argv[0]) or "guided_diffusion"
        sys.stderr.write(f"{prog}: error: {exc}\n")
        sys.exit(2)


__all__ = [
    "create_argparser",
    "output_filename",
    "run_single_process",
    "run_cli",
    "save_npz_atomic",
    "save_grid_png",
    "str2bool",
]
