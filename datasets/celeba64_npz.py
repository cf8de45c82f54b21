"""
CelebA (aligned & cropped, img_align_celeba/*.jpg, 178x218) -> 64x64 RGB npz.

Crop choice (--crop): the upstream preparation resized the whole 178x218 frame without
cropping, which squashes faces (a known issue). Default here is the common practice: the
centred 140x140 box (left 19, top 39 on a 178x218 image), then resize to 64 with the ADM
rule (BOX halving while >= 2x, then BICUBIC). Other choices: center108 (tighter face box),
square (largest centred square, i.e. the ADM centre crop of load_data), none (the whole
frame resized to 64x64, aspect ratio not kept; only to reproduce the upstream behaviour).
Output: arr_0 uint8 (N, 64, 64, 3) RGB, in sorted file-name order.
"""

import functools
import os

import numpy as np
from PIL import Image

from guided_diffusion.data.prep import (
    Outputs, PrepError, add_overwrite_arg, center_crop_arr, images_entry, list_images,
    make_parser, open_image, positive_int, precheck_outputs, require_dir, require_file,
    run_main, write_npz,
)

CROPS = ("center140", "center108", "square", "none")
SPLITS = {"train": "0", "valid": "1", "test": "2"}


def prepare(path, crop, image_size):
    img = open_image(path, "RGB")
    if crop == "none":
        return np.asarray(img.resize((image_size, image_size), resample=Image.BICUBIC))
    if crop.startswith("center"):
        box = int(crop[len("center"):])
        w, h = img.size
        if w < box or h < box:
            raise PrepError(f"image {path!r} is {w}x{h}, smaller than the {box}x{box} crop")
        left, top = (w - box) // 2, (h - box) // 2
        img = img.crop((left, top, left + box, top + box))
    return center_crop_arr(img, image_size)


def read_partition(path, split):
    require_file(path, "--partition_file", "pass list_eval_partition.txt from CelebA")
    keep = set()
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise PrepError(f"{path!r} line {n}: expected '<file> <0|1|2>', "
                                f"got {line.strip()!r}")
            if parts[1] == SPLITS[split]:
                keep.add(parts[0])
    return keep


def main(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--data_dir", required=True, help="the img_align_celeba folder of JPEGs")
    p.add_argument("--out", required=True, help="output .npz path")
    p.add_argument("--crop", choices=CROPS, default="center140",
                   help="crop before resizing (see the description)")
    p.add_argument("--image_size", type=positive_int, default=64, help="output side length")
    p.add_argument("--partition_file", default=None,
                   help="list_eval_partition.txt; needed for --split other than all")
    p.add_argument("--split", choices=("all",) + tuple(SPLITS), default="all",
                   help="which official split to keep (all = every image in the folder)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="keep only the first LIMIT images in sorted order (default: all)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="processes decoding images in parallel")
    add_overwrite_arg(p)
    args = p.parse_args(argv)

    precheck_outputs(args.overwrite, files=[args.out])
    require_dir(args.data_dir, "--data_dir", "pass the extracted img_align_celeba folder")
    paths = list_images(args.data_dir)
    if args.split != "all":
        if not args.partition_file:
            raise PrepError(f"--split {args.split} needs --partition_file list_eval_partition.txt")
        keep = read_partition(args.partition_file, args.split)
        paths = [q for q in paths if os.path.basename(q) in keep]
    elif args.partition_file:
        raise PrepError("--partition_file given with --split all; pick --split train/valid/test")
    if args.limit:
        paths = paths[:args.limit]
    if not paths:
        raise PrepError(f"no images found in {args.data_dir!r}"
                        + ("" if args.split == "all" else f" for split {args.split}"))

    fn = functools.partial(prepare, crop=args.crop, image_size=args.image_size)
    with Outputs(overwrite=args.overwrite) as out:
        write_npz(out.file(args.out, ".npz"),
                  [images_entry("arr_0", paths, fn, args.image_size, 3, args.workers)])
    print(f"wrote {args.out}: arr_0 ({len(paths)}, {args.image_size}, {args.image_size}, 3) uint8")


if __name__ == "__main__":
    run_main(main)
