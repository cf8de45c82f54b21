"""
FFHQ thumbnails (thumbnails128x128/**/*.png) -> 128x128 RGB npz.

Input: a folder (searched recursively) of images, normally the official 128x128 thumbnails,
which are stored as they are. Other sizes are brought to --image_size with the ADM rule
(BOX halving while >= 2x, BICUBIC to the shorter side, centre crop).
Output: arr_0 uint8 (N, S, S, 3) RGB, in sorted path order.
"""

import functools

from guided_diffusion.data.prep import (
    Outputs, PrepError, add_overwrite_arg, center_crop_arr, images_entry, list_images,
    make_parser, open_image, positive_int, precheck_outputs, require_dir, run_main,
    write_npz,
)


def prepare(path, image_size):
    return center_crop_arr(open_image(path, "RGB"), image_size)


def main(argv=None):
    p = make_parser(__doc__)
    p.add_argument("--data_dir", required=True,
                   help="folder of FFHQ thumbnails (searched recursively)")
    p.add_argument("--out", required=True, help="output .npz path")
    p.add_argument("--image_size", type=positive_int, default=128, help="output side length")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="keep only the first LIMIT images in sorted order (default: all)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="processes decoding images in parallel")
    add_overwrite_arg(p)
    args = p.parse_args(argv)

    precheck_outputs(args.overwrite, files=[args.out])
    require_dir(args.data_dir, "--data_dir", "pass the FFHQ thumbnails128x128 folder")
    paths = list_images(args.data_dir)
    if args.limit:
        paths = paths[:args.limit]
    if not paths:
        raise PrepError(f"no images found in {args.data_dir!r}")
    fn = functools.partial(prepare, image_size=args.image_size)
    with Outputs(overwrite=args.overwrite) as out:
        write_npz(out.file(args.out, ".npz"),
                  [images_entry("arr_0", paths, fn, args.image_size, 3, args.workers)])
    print(f"wrote {args.out}: arr_0 ({len(paths)}, {args.image_size}, {args.image_size}, 3) uint8")


if __name__ == "__main__":
    run_main(main)
