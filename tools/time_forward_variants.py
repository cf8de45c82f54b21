"""Time one network forward of the seed CIFAR-10 model under each fast-path variant (GPU check).

    python tools/time_forward_variants.py --batch_size 256

Prints ms per forward (mean of 10 after one warm-up, CUDA synchronised) for: upstream einsum
attention in fp32, fused sdpa in fp32, sdpa with bf16 / fp16 autocast, channels_last, and TF32.
"""

import argparse
import time

import torch

from guided_diffusion.sampler.fast_path import apply_fast_path
from guided_diffusion.script_util import PAPER_CIFAR10_FLAGS as SEED_CONFIG
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.settings import OutputConfig, add_settings


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_settings(p, OutputConfig, only=("batch_size",), defaults={"batch_size": 256})
    p.add_argument("--repeats", type=int, default=10, help="timed forwards per variant")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net, _ = create_model_and_diffusion(**dict(model_and_diffusion_defaults(), **SEED_CONFIG))
    net.to(device).eval()
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    t = torch.full((args.batch_size,), 500, device=device)

    def timed(fn):
        with torch.no_grad():
            fn(x, t)
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.repeats):
                fn(x, t)
            if device == "cuda":
                torch.cuda.synchronize()
        return (time.perf_counter() - start) / args.repeats * 1e3

    variants = [("math fp32", dict(attention="math")), ("sdpa fp32", dict(attention="sdpa")),
                ("sdpa bf16", dict(attention="sdpa", autocast="bf16")),
                ("sdpa fp16", dict(attention="sdpa", autocast="fp16")),
                ("sdpa bf16 cl", dict(attention="sdpa", autocast="bf16", channels_last=True)),
                ("sdpa fp32 cl", dict(attention="sdpa", channels_last=True))]
    for name, kw in variants:
        net.to(memory_format=torch.contiguous_format)
        print(name, round(timed(apply_fast_path(net, device=device, **kw)), 2), "ms", flush=True)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print("sdpa tf32", round(timed(apply_fast_path(net, device=device, attention="sdpa")), 2), "ms")


if __name__ == "__main__":
    main()
