"""Time the evaluator's Inception forward on the CPU: NCHW (plain) against NHWC (channels_last, what
load_inception returns on the CPU), on the same images; prints seconds per image, the ratio, and the
largest feature difference.

    python tools/benchmark_evaluator.py --num 64 --repeats 2
"""

import argparse
import copy
import time

import torch

from evaluations.inception import load_inception
from guided_diffusion.cli import run_cli
from guided_diffusion.settings import EvalConfig, add_settings, nonneg_int


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num", type=nonneg_int, default=64, help="images per timed forward pass (default: 64)")
    p.add_argument("--size", type=nonneg_int, default=32, help="image side before the resize to 299 (default: 32)")
    p.add_argument("--repeats", type=nonneg_int, default=2, help="timed passes per layout; the fastest counts "
                   "(default: 2)")
    add_settings(p, EvalConfig, only=("inception_path",))
    args = p.parse_args(argv)
    if args.num < 1 or args.repeats < 1:
        raise ValueError("--num and --repeats must be >= 1")
    nhwc = load_inception(args.inception_path or None, "cpu")
    nchw = copy.deepcopy(nhwc).to(memory_format=torch.contiguous_format)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (args.num, args.size, args.size, 3), dtype=torch.uint8)
    best, outs = {}, {}
    for _ in range(args.repeats):
        for name, net in (("nchw", nchw), ("nhwc", nhwc)):
            start = time.perf_counter()
            with torch.inference_mode():
                outs[name] = net(x)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    diff = max(float((outs["nhwc"][k] - outs["nchw"][k]).abs().max()) for k in ("pool", "spatial"))
    print(f"threads {torch.get_num_threads()}, {args.num} images of {args.size} px, best of {args.repeats}")
    for name in ("nchw", "nhwc"):
        print(f"{name}: {best[name]:.2f} s ({best[name] / args.num * 1000:.0f} ms per image)")
    print(f"speed-up nhwc / nchw: {best['nchw'] / best['nhwc']:.2f}x; largest feature difference {diff:.2e}")


if __name__ == "__main__":
    run_cli(main)
