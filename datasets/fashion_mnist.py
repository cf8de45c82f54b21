"""
Fashion-MNIST idx files -> 32x32 npz (grey, or RGB-replicated for the evaluator).

Input: the idx files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte (each plain or .gz). By default they are looked up where the Debian
package dataset-fashion-mnist puts them (apt-get install dataset-fashion-mnist).
28x28 -> 32x32 by padding 2 black pixels on each side (default; keeps the pixels exact, as
is common for 32x32 MNIST-style training) or by a bicubic resize (--resize bicubic).
Output: arr_0 uint8 (N, 32, 32, 1) grey, or (N, 32, 32, 3) with --rgb; arr_1 int64 labels
(0..9) unless --no_labels. Fashion-MNIST pixels are 0 = background (black).
"""

import gzip
import os
import shutil
import subprocess

import numpy as np
from PIL import Image

from guided_diffusion.data.prep import (
    Outputs, PrepError, add_overwrite_arg, make_parser, positive_int, precheck_outputs,
    require_dir, run_main, write_npz,
)

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
PREFIX = {"train": "train", "test": "t10k"}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def default_data_dir():
    """The folder holding the idx files of the Debian package, if installed."""
    if shutil.which("dpkg"):
        try:
            listing = subprocess.run(["dpkg", "-L", DEBIAN_PACKAGE], capture_output=True,
                                     text=True, timeout=30)
            for line in listing.stdout.splitlines():
                if os.path.basename(line).startswith("train-images-idx3-ubyte"):
                    return os.path.dirname(line)
        except (OSError, subprocess.SubprocessError):
            pass
    return DEBIAN_DEFAULT_DIR


def find_idx(data_dir, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    raise PrepError(
        f"{stem}[.gz] not found in {data_dir!r}; pass --data_dir with the Fashion-MNIST "
        f"idx files or apt-get install {DEBIAN_PACKAGE}"
    )


def read_idx(path, ndim):
    """Read an idx file of unsigned bytes with ``ndim`` dimensions."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise PrepError(f"cannot read {path!r}: {exc}")
    if len(raw) < 4 + 4 * ndim:
        raise PrepError(f"{path!r} is too short to be an idx file")
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x0800 + ndim:
        raise PrepError(f"{path!r}: bad idx magic 0x{magic:08x}, expected 0x{0x800 + ndim:08x} "
                        f"(unsigned bytes, {ndim} dims)")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise PrepError(f"{path!r}: header says {dims} ({int(np.prod(dims))} bytes) but the "
                        f"file has {len(body)} data bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def to_32(images, method):
    n, h, w = images.shape
    if method == "pad":
        if h > 32 or w > 32:
            raise PrepError(f"cannot pad {h}x{w} images to 32x32")
        out = np.zeros((n, 32, 32), dtype=np.uint8)
        top, left = (32 - h) // 2, (32 - w) // 2
        out[:, top:top + h, left:left + w] = images
        return out
    return np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BICUBIC))
                     for im in images])


def main(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--data_dir", default=None,
                   help="folder with the idx files (default: the dataset-fashion-mnist Debian "
                        f"package folder, usually {DEBIAN_DEFAULT_DIR})")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="train (60000 images) or test (10000 images)")
    p.add_argument("--out", required=True, help="output .npz path")
    p.add_argument("--rgb", action="store_true",
                   help="replicate grey to 3 channels (N,32,32,3), the evaluator's format")
    p.add_argument("--resize", choices=("pad", "bicubic"), default="pad",
                   help="28->32: pad 2 black pixels per side (exact) or bicubic resize")
    p.add_argument("--no_labels", action="store_true", help="do not store arr_1 labels")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="keep only the first LIMIT images (default: all)")
    add_overwrite_arg(p)
    args = p.parse_args(argv)

    precheck_outputs(args.overwrite, files=[args.out])
    data_dir = args.data_dir or default_data_dir()
    require_dir(data_dir, "Fashion-MNIST folder",
                f"pass --data_dir or apt-get install {DEBIAN_PACKAGE}")
    prefix = PREFIX[args.split]
    images_path = find_idx(data_dir, f"{prefix}-images-idx3-ubyte")
    labels_path = find_idx(data_dir, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if labels.shape[0] != images.shape[0]:
        raise PrepError(f"{images.shape[0]} images but {labels.shape[0]} labels in {data_dir!r}")
    if labels.size and labels.max() > 9:
        raise PrepError(f"labels in {data_dir!r} go above 9; not Fashion-MNIST label files")
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]

    x = to_32(images, args.resize)[..., None]
    if args.rgb:
        x = np.repeat(x, 3, axis=-1)
    entries = [("arr_0", x)]
    if not args.no_labels:
        entries.append(("arr_1", labels.astype(np.int64)))
    with Outputs(overwrite=args.overwrite) as out:
        write_npz(out.file(args.out, ".npz"), entries)
    print(f"wrote {args.out}: arr_0 {x.shape} uint8"
          + ("" if args.no_labels else f", arr_1 {labels.shape} int64"))


if __name__ == "__main__":
    run_main(main)
