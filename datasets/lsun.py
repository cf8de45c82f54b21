"""
LSUN category lmdb (e.g. bedroom_train_lmdb) -> PNG folder and/or RGB npz.

Input: the lmdb folder of one LSUN category (data.mdb, lock.mdb); each value is an encoded
image (webp/jpeg). Needs the optional package lmdb (pip install lmdb).
Each image is decoded with PIL as RGB (packers that decode with OpenCV get BGR channel
order; the tests check that red stays red), its shorter side is resized to --image_size
with a BOX filter and the centre is cropped. PNG names are {prefix}_{index:07d}.png in
lmdb key order.
Output: --out_dir PNG folder and/or --out npz with arr_0 uint8 (N, S, S, 3).
"""

import os

from guided_diffusion.data.prep import (
    Outputs, PrepError, add_overwrite_arg, images_entry, lsun_resize_crop, make_parser,
    open_image, positive_int, precheck_outputs, require_dir, run_main, save_png, write_npz,
)


def open_lmdb(path):
    try:
        import lmdb
    except ImportError:
        raise PrepError("the optional package 'lmdb' is needed to read LSUN: pip install lmdb")
    require_dir(path, "--lmdb_dir", "pass the extracted <category>_<split>_lmdb folder")
    if not os.path.isfile(os.path.join(path, "data.mdb")):
        raise PrepError(f"{path!r} has no data.mdb; pass the extracted LSUN lmdb folder")
    try:
        return lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False,
                         max_readers=1, subdir=True)
    except lmdb.Error as exc:
        raise PrepError(f"cannot open {path!r} as lmdb: {exc}")


def default_prefix(lmdb_dir):
    base = os.path.basename(os.path.normpath(lmdb_dir))
    return base.split("_")[0] or "lsun"


def main(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--lmdb_dir", required=True, help="LSUN category lmdb folder")
    p.add_argument("--out_dir", default=None, help="write PNGs into this new folder")
    p.add_argument("--out", default=None, help="write an .npz at this path")
    p.add_argument("--image_size", type=positive_int, default=256, help="output side length")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="keep only the first LIMIT images in key order (default: all)")
    p.add_argument("--prefix", default=None,
                   help="PNG file-name prefix (default: the category, e.g. 'bedroom')")
    add_overwrite_arg(p)
    args = p.parse_args(argv)

    if not args.out_dir and not args.out:
        raise PrepError("nothing to do: pass --out_dir (PNG folder) and/or --out (npz)")

    precheck_outputs(args.overwrite, files=[args.out], dirs=[args.out_dir])
    prefix = args.prefix or default_prefix(args.lmdb_dir)
    if "_" in prefix or os.sep in prefix:
        raise PrepError(f"--prefix {prefix!r} must not contain '_' or '{os.sep}'")
    env = open_lmdb(args.lmdb_dir)
    n = env.stat()["entries"]
    if args.limit:
        n = min(n, args.limit)
    if n == 0:
        raise PrepError(f"{args.lmdb_dir!r} holds no images")
    size = args.image_size

    with Outputs(overwrite=args.overwrite) as out, env.begin(write=False) as txn:
        png_dir = out.dir(args.out_dir) if args.out_dir else None
        npz_tmp = out.file(args.out, ".npz") if args.out else None

        def values():
            cursor = txn.cursor()
            for i, (key, value) in enumerate(cursor):
                if i >= n:
                    break
                yield key, bytes(value)

        def load(kv):
            key, value = kv
            name = f"{args.lmdb_dir}[{key.decode('latin1')}]"
            return lsun_resize_crop(open_image(value, "RGB", name=name), size)

        def write_png(i, arr):
            save_png(arr, os.path.join(png_dir, f"{prefix}_{i:07d}.png"))

        entry = images_entry("arr_0", values(), load, size, 3, 1,
                             on_image=write_png if png_dir else None, count=n)
        if npz_tmp:
            write_npz(npz_tmp, [entry])
        else:
            for _ in entry[3]:
                pass
    env.close()
    if args.out_dir:
        print(f"wrote {n} PNGs to {args.out_dir}")
    if args.out:
        print(f"wrote {args.out}: arr_0 ({n}, {size}, {size}, 3) uint8")


if __name__ == "__main__":
    run_main(main)
