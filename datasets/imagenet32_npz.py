"""
Downsampled ImageNet (Chrabaszcz et al. 2017, "Imagenet32x32" pickle batches) -> npz.

Input: a folder with train_data_batch_1 .. train_data_batch_10 (and/or val_data), python
pickles of a dict with 'data' uint8 (N, 3072) = R, G, B planes of 32x32 and 'labels' 1-based
(1..1000). The 64x64 variant (N, 12288) works too. Output: arr_0 uint8 (N, S, S, 3) RGB,
arr_1 int64 labels 0-based (0..999).
"""

import os
import re

import numpy as np

from guided_diffusion.data.prep import (
    Outputs, PrepError, add_overwrite_arg, load_pickle_batch, make_parser, planes_to_nhwc,
    positive_int, precheck_outputs, require_dir, run_main, write_npz,
)


def batch_files(data_dir, split):
    names = os.listdir(data_dir)
    if split == "val":
        files = [n for n in names if n == "val_data"]
    else:
        files = sorted((n for n in names if re.fullmatch(r"train_data_batch_\d+", n)),
                       key=lambda n: int(n.rsplit("_", 1)[1]))
    if not files:
        want = "val_data" if split == "val" else "train_data_batch_1..10"
        raise PrepError(f"no {want} file in {data_dir!r}; extract the downsampled-ImageNet "
                        f"archive (Imagenet32_train.zip / Imagenet32_val.zip) there")
    return [os.path.join(data_dir, n) for n in files]


def main(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--data_dir", required=True,
                   help="folder with train_data_batch_* / val_data pickle files")
    p.add_argument("--split", choices=("train", "val"), default="train",
                   help="train (all train_data_batch_* files, in numeric order) or val")
    p.add_argument("--out", required=True, help="output .npz path")
    p.add_argument("--no_labels", action="store_true", help="do not store arr_1 labels")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="keep only the first LIMIT images (default: all)")
    add_overwrite_arg(p)
    args = p.parse_args(argv)

    precheck_outputs(args.overwrite, files=[args.out])
    require_dir(args.data_dir, "--data_dir")
    images, labels, side = [], [], None
    total = 0
    for path in batch_files(args.data_dir, args.split):
        batch = load_pickle_batch(path, "downsampled-ImageNet pickle batch")
        if "data" not in batch or "labels" not in batch:
            raise PrepError(f"{path!r}: missing 'data' or 'labels' (keys: {sorted(batch)})")
        x = planes_to_nhwc(batch["data"], path)
        if side is None:
            side = x.shape[1]
        elif x.shape[1] != side:
            raise PrepError(f"{path!r}: {x.shape[1]}x{x.shape[1]} images, earlier files "
                            f"had {side}x{side}")
        y = np.asarray(batch["labels"], dtype=np.int64)
        if y.shape != (x.shape[0],):
            raise PrepError(f"{path!r}: {x.shape[0]} images but labels of shape {y.shape}")
        if y.size and (y.min() < 1 or y.max() > 1000):
            raise PrepError(f"{path!r}: labels must be 1-based (1..1000), found "
                            f"{y.min()}..{y.max()}")
        if args.limit and total + x.shape[0] > args.limit:
            x, y = x[:args.limit - total], y[:args.limit - total]
        images.append(x)
        labels.append(y - 1)
        total += x.shape[0]
        if args.limit and total >= args.limit:
            break

    entries = [("arr_0", (total, side, side, 3), np.uint8, images)]
    if not args.no_labels:
        entries.append(("arr_1", (total,), np.int64, labels))
    with Outputs(overwrite=args.overwrite) as out:
        write_npz(out.file(args.out, ".npz"), entries)
    print(f"wrote {args.out}: arr_0 ({total}, {side}, {side}, 3) uint8"
          + ("" if args.no_labels else f", arr_1 ({total},) int64 0-based"))


if __name__ == "__main__":
    run_main(main)
