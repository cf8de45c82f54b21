"""The sampling command shared by ``scripts/image_sample_1gpu.py`` and ``scripts/image_sample.py``.

One parser (upstream's flags plus ``--seed``, ``--eta``, ``--ts_rule``, ``--grid``,
``--keep_parts``, ``--overwrite``) and one :func:`run_sampling`; the scripts only choose how
processes are set up (``image_sample.py`` calls ``dist_util.setup_dist`` first).

How a run goes, with W processes (W = 1 for ``image_sample_1gpu.py``):

1. every rank checks the flags; rank 0 reads the checkpoint and broadcasts it (in chunks);
2. rank 0 prepares ``OUT.npz.parts/`` (see :mod:`guided_diffusion.sample_parts`): finished parts
   made with the same pixel-affecting flags are kept, different flags are refused, and the
   indices still missing are cut into batches of ``--batch_size``;
3. batch j goes to rank j % W; ranks work in rounds (one batch each) and after every round sum
   (samples done, failures) with one all_reduce: rank 0's progress bar counts every rank, and a
   failure on any rank (e.g. a NaN sample) stops all of them after that round, with one error
   line from the failing rank and exit status 2. Each finished batch is a part file, written
   atomically before the round ends, so a killed process loses only its batch in flight;
4. rank 0 streams the parts, in index order, into ``OUT.npz`` (one part in memory at a time),
   renames it into place and removes the parts unless ``--keep_parts True``.

The result depends only on the pixel flags and the checkpoint: the same bytes for any batch
size, process count, or number of interruptions.
"""

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch

from . import sample_parts
from .checkpoint import CheckpointError, load_checkpoint_into
from .fast_path import apply_fast_path
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
    attention="math",
    autocast="none",
    channels_last=False,
    compile=False,
    progress=True,
    keep_parts=False,
    overwrite=False,
    compare_grid="",
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
    "autocast": "fast path: run the network under torch.autocast with none, bf16 or fp16 (changes numbers)",
    "channels_last": "fast path: channels_last memory format for the network",
    "compile": "fast path: wrap the network in torch.compile",
    "attention": "attention kernel: math (upstream einsum) or sdpa (fused scaled_dot_product_attention)",
    "progress": "show a progress bar (rank 0, counting every process's samples) and the images/s",
    "keep_parts": "keep OUT.npz.parts/ (finished batches) after writing OUT.npz; a later run with a "
    "larger --num_samples then only makes the new samples",
    "compare_grid": "also write a PNG comparing the first --grid_size samples without (left) and with "
    "(right) the time shift, same seeds (uses --window/--cutoff/--ts_rule even if --do_time_shift is False)",
    "overwrite": "discard finished parts in OUT.npz.parts/ and start over (needed when the "
    "pixel-affecting flags or the checkpoint changed)",
}

# Flags that cannot change a pixel of sample k: left out of the parts' meta, so they may change
# between a run and its resumption. (--model_path is replaced by the checkpoint's SHA-256;
# --num_samples only decides which indices are wanted: sample k does not depend on it.)
NON_PIXEL_FLAGS = frozenset(
    [
        "out_dir", "progress", "batch_size", "gpu_id", "num_samples", "grid", "grid_size", "compare_grid",
        "keep_parts", "overwrite", "data_type", "model_type", "model_path",
        "classifier_scale", "classifier_depth", "classifier_path",
        # training-only model/diffusion flags
        "dropout", "use_checkpoint", "use_kl", "rescale_learned_sigmas",
        "input_pertub", "perturb_schedule_type", "perturb_cutoff",
    ]
)

# Test hook: a process exits hard (os._exit, like kill -9) after writing this many part files.
EXIT_AFTER_PARTS_ENV = "GUIDED_DIFFUSION_TEST_EXIT_AFTER_PARTS"


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
        if action.dest == "autocast":
            action.choices = ("none", "bf16", "fp16")
    return parser


def _given(argv, name):
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv)


def parse_sampling_args(argv=None, description=None):
    """Parse the sampling flags; with no --model_path and no model flags, use the bundled demo model.

    The demo model (``guided_diffusion/assets``, a grey-scale Fashion-MNIST UNet) gets its own
    model flags, and ``--data_type``/``--model_type`` default to its names, so a fresh clone
    can sample with no download.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = create_argparser(description).parse_args(argv)
    model_keys = set(model_and_diffusion_defaults()) - {
        "timestep_respacing", "do_time_shift", "window", "cutoff", "ts_rule"}
    if args.model_path or any(_given(argv, k) for k in model_keys):
        return args
    from . import demo

    if not demo.demo_available():
        raise CheckpointError(
            f"no --model_path given and the bundled demo model is missing ({demo.DEMO_CHECKPOINT}); "
            "pass --model_path and your checkpoint's model flags"
        )
    with open(demo.DEMO_FLAGS) as f:
        info = json.load(f)
    for key, value in info["model_flags"].items():
        setattr(args, key, value)
    args.model_path = demo.DEMO_CHECKPOINT
    for key in ("data_type", "model_type"):
        if not _given(argv, key):
            setattr(args, key, info[key])
    return args


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

    _save_png_atomic(path, Image.fromarray(grid_array(images, nrow)))


def _save_png_atomic(path, img):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
    os.close(fd)
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def grid_array(images, nrow=None):
    """(N, H, W, 3) uint8 -> one (rows*(H+2)+2, nrow*(W+2)+2, 3) grid image with 2-pixel gaps."""
    n, h, w, c = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    grid = np.zeros((ncol * (h + 2) + 2, nrow * (w + 2) + 2, c), dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, nrow)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + q * (w + 2) : 2 + q * (w + 2) + w] = images[k]
    return grid


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
    model.eval()
    runner = apply_fast_path(model, device=device, attention=args.attention, autocast=args.autocast,
                             channels_last=args.channels_last, compile=args.compile)
    if runner is not model:
        runner.num_classes = model.num_classes
    return runner, diffusion


def sampler_settings(args):
    """A short description of the sampler, for error messages and logs."""
    text = f"{'DDIM' if args.use_ddim else 'DDPM'} respacing={args.timestep_respacing or 'all'}"
    if args.use_ddim and args.eta:
        text += f" eta={args.eta}"
    if args.do_time_shift:
        text += f" time shift rule={args.ts_rule} window={args.window} cutoff={args.cutoff}"
    return text + f" seed={args.seed}"


class StopRun(Exception):
    """Another rank failed and reported it; this rank stops quietly (exit status 2)."""


def _rank():
    from . import dist_util

    return dist_util.get_rank()


def _check_all(exc):
    """Collective: if any rank has an exception, the first such rank raises it, the others StopRun."""
    from . import dist_util

    failed = [r for r in dist_util.all_gather_object(None if exc is None else _rank()) if r is not None]
    if not failed:
        return
    if exc is not None and failed[0] == _rank():
        raise exc
    raise StopRun(f"rank {failed[0]} failed")


def _on_rank0(fn):
    """Collective: ``fn()`` on rank 0, its result broadcast; if it raised, rank 0 re-raises, the others StopRun."""
    from . import dist_util

    result, exc = None, None
    if _rank() == 0:
        try:
            result = fn()
        except Exception as e:  # reported below, on rank 0 only
            exc = e
    failed, result = dist_util.broadcast_object((exc is not None, result))
    if failed:
        if exc is not None:
            raise exc
        raise StopRun("rank 0 failed")
    return result


def pixel_flags(args):
    """The flags that decide the pixels of sample k (stored in, and compared with, the parts' meta)."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in NON_PIXEL_FLAGS}


def _device_description(device):
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def run_sampling(args, device=None):
    """Generate samples 0..num_samples-1 over all ranks, resumably; rank 0 writes the npz.

    Call :func:`guided_diffusion.dist_util.setup_dist` first for several processes (without it
    this is a single process). Returns the npz path on rank 0, None on the others.

    :raises StopRun: on ranks other than the one that reports a failure.
    """
    from . import dist_util

    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    device = dist_util.dev() if device is None else torch.device(device)
    out_path = os.path.join(args.out_dir, output_filename(args))
    parts_dir = sample_parts.parts_dir_for(out_path)

    # 1. flags, checkpoint (read once on rank 0, broadcast), model.
    exc = None
    try:
        validate_args(args)
    except Exception as e:
        exc = e
    _check_all(exc)

    def check_path():
        if not args.model_path:
            raise CheckpointError("--model_path is empty: pass the checkpoint file to sample from")
        if not os.path.isfile(args.model_path):
            raise CheckpointError(f"--model_path {args.model_path}: no such file")

    _on_rank0(check_path)
    data = dist_util.read_file_on_rank0(args.model_path)
    checkpoint_sha256 = hashlib.sha256(data).hexdigest() if rank == 0 else None
    model = diffusion = None
    try:
        model, diffusion = build_model_and_diffusion(args, device, checkpoint_bytes=data)
    except Exception as e:
        exc = e
    del data
    _check_all(exc)

    # 2. parts folder and the plan (rank 0 decides, everyone gets the same list).
    def prepare():
        os.makedirs(args.out_dir, exist_ok=True)
        meta = {
            "flags": {**pixel_flags(args), "checkpoint_sha256": checkpoint_sha256},
            "info": {
                "model_path": os.path.abspath(args.model_path),
                "device": _device_description(device),
                "torch": torch.__version__,
            },
        }
        parts, warnings = sample_parts.prepare_parts_dir(parts_dir, meta, overwrite=args.overwrite)
        return sample_parts.done_intervals(parts, args.num_samples), warnings

    done, warnings = _on_rank0(prepare)
    if rank == 0:
        for line in warnings:
            sys.stderr.write(f"warning: {line}\n")
    batches = sample_parts.plan_batches(done, args.num_samples, args.batch_size)
    mine = batches[rank::world]
    rounds = math.ceil(len(batches) / world)

    # 3. rounds of one batch per rank.
    sample_kwargs = dict(
        shape=(args.image_channels, args.image_size, args.image_size),
        seed=args.seed,
        sampler="ddim" if args.use_ddim else "ddpm",
        eta=args.eta,
        clip_denoised=args.clip_denoised,
        num_classes=model.num_classes,
        settings=sampler_settings(args),
    )
    already = sum(end - start for start, end in done)
    bar = None
    if rank == 0 and args.progress and batches:
        from tqdm.auto import tqdm

        bar = tqdm(total=args.num_samples, initial=already, unit="img", desc=f"sampling x{world}", smoothing=0.1)
    exit_after = int(os.environ.get(EXIT_AFTER_PARTS_ENV, "0") or 0)
    written = made = 0
    started = time.time()
    for r in range(rounds):
        exc, count = None, 0
        if r < len(mine):
            start, end = mine[r]
            try:
                batch = next(
                    generate_samples(
                        model, diffusion, range(start, end), batch_size=end - start, device=device, **sample_kwargs
                    )
                )
                sample_parts.write_part(parts_dir, start, batch.images, batch.labels)
                count = end - start
                del batch
            except Exception as e:  # reported to every rank after this round
                exc = e
            written += exc is None
            if exit_after and written >= exit_after:
                os._exit(137)
        count, failures = dist_util.all_reduce_ints([count, exc is not None])
        made += count
        if bar is not None:
            bar.update(count)
        if failures:
            if bar is not None:
                bar.close()
            _check_all(exc)
    if bar is not None:
        bar.close()
    if rank == 0 and args.progress and made:
        seconds = time.time() - started
        sys.stderr.write(
            f"sampled {made} images in {seconds:.1f} s ({made / seconds:.2f} images/s, {world} process(es))\n"
        )

    # 4. rank 0 streams the parts into the final npz.
    if rank != 0:
        return None
    grid = sample_parts.assemble(
        parts_dir,
        out_path,
        num_samples=args.num_samples,
        image_shape=(args.image_size, args.image_size, 3),
        with_labels=model.num_classes is not None,
        grid_size=args.grid_size if args.grid else 0,
    )
    if not args.keep_parts:
        sample_parts.remove_parts(parts_dir)
    if args.grid and grid is not None:
        save_grid_png(args.grid, grid)
    if args.compare_grid:
        write_compare_grid(args, model, diffusion, device, sample_kwargs)
    return out_path


def write_compare_grid(args, model, diffusion, device, sample_kwargs):
    """PNG: the first --grid_size samples without (left) and with (right) the time shift, same seeds."""
    from PIL import Image, ImageDraw

    from .time_shift import TimeShift

    n = min(args.grid_size, args.num_samples)
    shift = TimeShift(int(args.window), int(args.cutoff), args.ts_rule)
    panels = []
    for ts in (None, shift):
        batch = next(generate_samples(model, diffusion, range(n), batch_size=n, device=device,
                                      time_shift=ts, **sample_kwargs))
        panels.append(grid_array(batch.images))
    name = "DDIM" if args.use_ddim else "DDPM"
    steps = args.timestep_respacing or "all"
    titles = (f"{name}, {steps} steps", f"TS-{name} (w={args.window}, c={args.cutoff}, {args.ts_rule})")
    h, w, _ = panels[0].shape
    canvas = np.full((h + 16, 2 * w + 8, 3), 255, dtype=np.uint8)
    canvas[16:, :w] = panels[0]
    canvas[16:, w + 8 :] = panels[1]
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    draw.text((2, 2), titles[0], fill=(0, 0, 0))
    draw.text((w + 10, 2), titles[1], fill=(0, 0, 0))
    scale = max(1, -(-800 // img.width))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    _save_png_atomic(args.compare_grid, img)


def run_single_process(args, device):
    """:func:`run_sampling` in this process alone (no process group). Returns the npz path."""
    return run_sampling(args, device=device)


USER_ERRORS = (CheckpointError, NonFiniteSampleError, ValueError, OSError)


def run_cli(main, argv=None):
    """Run ``main(argv)``; user errors become one line on stderr and exit status 2.

    A rank stopped because another rank failed (:class:`StopRun`) exits with status 2 silently:
    the failing rank prints the one line.
    """
    try:
        return main(argv)
    except StopRun:
        sys.exit(2)
    except USER_ERRORS as exc:
        prog = os.path.basename(sys.argv[0]) or "guided_diffusion"
        sys.stderr.write(f"{prog}: error: {exc}\n")
        sys.exit(2)


__all__ = [
    "create_argparser",
    "output_filename",
    "run_sampling",
    "run_single_process",
    "run_cli",
    "save_npz_atomic",
    "save_grid_png",
    "str2bool",
]
