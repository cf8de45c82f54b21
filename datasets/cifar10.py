"""
CIFAR-10 python pickle batches -> PNG folders (cifar_train/, cifar_test/) and a reference npz.

Input: the folder ``cifar-10-batches-py`` from cifar-10-python.tar.gz (data_batch_1..5,
test_batch, optionally batches.meta for the class names), or a folder containing it.
PNG names are ``{class}_{idx:05d}.png``; idx counts on across splits (train 00000-49999,
test 50000-59999), so the class is the prefix before the first "_" as load_data expects.
The npz holds arr_0 uint8 (N, 32, 32, 3) RGB and arr_1 int64 labels (0..9).
"""

import os

import numpy as np

from guided_diffusion.data.prep import (
    Outputs, PrepError, add_overwrite_arg, load_pickle_batch, make_parser, planes_to_nhwc,
    precheck_outputs, require_dir, run_main, save_png, write_npz,
)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
SPLIT_FILES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
}


def find_batches_dir(data_dir):
    require_dir(data_dir, "--data_dir", "pass the extracted cifar-10-batches-py folder")
    for cand in (data_dir, os.path.join(data_dir, "cifar-10-batches-py")):
        if os.path.isfile(os.path.join(cand, "data_batch_1")) or \
                os.path.isfile(os.path.join(cand, "test_batch")):
            return cand
    raise PrepError(
        f"no CIFAR-10 batches (data_batch_1..5, test_batch) in {data_dir!r}; extract "
        f"cifar-10-python.tar.gz and pass the cifar-10-batches-py folder"
    )


def class_names(batches_dir):
    meta = os.path.join(batches_dir, "batches.meta")
    if not os.path.isfile(meta):
        return list(CLASSES)
    names = load_pickle_batch(meta, "CIFAR-10 batches.meta file").get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise PrepError(f"{meta!r}: expected 'label_names' with 10 names")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    for n in names:
        if "_" in n or os.sep in n or not n:
            raise PrepError(f"{meta!r}: class name {n!r} cannot be a file-name prefix")
    return names


def load_split(batches_dir, split):
    images, labels = [], []
    for name in SPLIT_FILES[split]:
        path = os.path.join(batches_dir, name)
        batch = load_pickle_batch(path, "CIFAR-10 pickle batch")
        if "data" not in batch or "labels" not in batch:
            raise PrepError(f"{path!r}: missing 'data' or 'labels' (keys: {sorted(batch)})")
        x = planes_to_nhwc(batch["data"], path, side=32)
        y = np.asarray(batch["labels"], dtype=np.int64)
        if y.shape != (x.shape[0],) or (y.size and (y.min() < 0 or y.max() > 9)):
            raise PrepError(f"{path!r}: 'labels' must be {x.shape[0]} values in 0..9")
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def main(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--data_dir", required=True,
                   help="the cifar-10-batches-py folder (or a folder containing it)")
    p.add_argument("--out_dir", default=".",
                   help="where cifar_train/ and cifar_test/ PNG folders are written")
    p.add_argument("--splits", default="train,test",
                   help="comma-separated splits to write as PNG folders: train, test")
    p.add_argument("--no_png", action="store_true", help="do not write PNG folders")
    p.add_argument("--ref_npz", default=None,
                   help="reference npz of the train split (default: OUT_DIR/cifar10_train.npz)")
    p.add_argument("--no_npz", action="store_true", help="do not write the reference npz")
    p.add_argument("--test_npz", default=None,
                   help="also write the test split as this npz (optional)")
    add_overwrite_arg(p)
    args = p.parse_args(argv)

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    for s in splits:
        if s not in SPLIT_FILES:
            raise PrepError(f"--splits: unknown split {s!r}; use train and/or test")
    if args.no_png and args.no_npz and not args.test_npz:
        raise PrepError("nothing to do: --no_png and --no_npz given without --test_npz")

    ref = args.ref_npz or os.path.join(args.out_dir, "cifar10_train.npz")
    precheck_outputs(
        args.overwrite,
        files=[None if args.no_npz else ref, args.test_npz],
        dirs=[] if args.no_png else [os.path.join(args.out_dir, f"cifar_{s}") for s in splits],
    )
    batches_dir = find_batches_dir(args.data_dir)
    names = class_names(batches_dir)
    need = set(() if args.no_png else splits)
    if not args.no_npz:
        need.add("train")
    if args.test_npz:
        need.add("test")
    data = {s: load_split(batches_dir, s) for s in ("train", "test") if s in need}

    with Outputs(overwrite=args.overwrite) as out:
        if not args.no_png:
            offset = 0
            for split in ("train", "test"):  # fixed order so idx counts on train -> test
                n = 50000 if split == "train" else 10000
                if split in splits:
                    x, y = data[split]
                    folder = out.dir(os.path.join(args.out_dir, f"cifar_{split}"))
                    for i in range(x.shape[0]):
                        save_png(x[i], os.path.join(folder, f"{names[y[i]]}_{offset + i:05d}.png"))
                    n = x.shape[0]
                elif split in data:
                    n = data[split][0].shape[0]
                offset += n
        if not args.no_npz:
            x, y = data["train"]
            write_npz(out.file(ref, ".npz"), [("arr_0", x), ("arr_1", y)])
        if args.test_npz:
            x, y = data["test"]
            write_npz(out.file(args.test_npz, ".npz"), [("arr_0", x), ("arr_1", y)])
    for split in (() if args.no_png else splits):
        print(f"wrote {data[split][0].shape[0]} PNGs to "
              f"{os.path.join(args.out_dir, 'cifar_' + split)}")
    if not args.no_npz:
        print(f"wrote {ref}: arr_0 {data['train'][0].shape} uint8, arr_1 labels")
    if args.test_npz:
        print(f"wrote {args.test_npz}: arr_0 {data['test'][0].shape} uint8, arr_1 labels")


if __name__ == "__main__":
    run_main(main)
