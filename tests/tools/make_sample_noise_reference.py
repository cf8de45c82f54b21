"""Record reference outputs of ``SampleNoise`` for tests/test_generate.py (bit-identity check).

Made with the generator of commit d218a66, before its speed-up:

    PYTHONPATH=. python tests/tools/make_sample_noise_reference.py --out tests/data/sample_noise_reference.pt

Each case is (seed, sample indices, stream, shape) and the exact float32 normals / int64 labels.
"""

import argparse

import torch

from guided_diffusion.sampler.generate import LABEL_STREAM, SampleNoise

# (seed, indices, stream, shape): odd and even sizes, size 1, the CIFAR shape, large/wrapping
# indices and seeds, the x_T stream (0), loop streams and the label stream.
NORMAL_CASES = [
    (0, [0, 1, 2, 3], 0, (3, 32, 32)),
    (0, [5, 0, 511], 1, (3, 32, 32)),
    (1, [0, 1], 50, (3, 8, 8)),
    (12345, [7, 3, 2**31 - 1, 2**31, 2**32 + 9], 3, (1, 5, 3)),
    (2**32 - 1, [0, 100], 0, (1,)),
    (-7, [42], 999, (2,)),
    (2**40 + 3, [9, 8, 7], 2, (4, 1, 7)),
    (3, [1, 2, 3, 4, 5, 6], LABEL_STREAM - 1, (3, 3)),
]
INTEGER_CASES = [
    (0, list(range(16)), LABEL_STREAM, 1000),
    (5, [0, 2**31 + 1, 123456789], LABEL_STREAM, 10),
    (2**33, [4, 5], 17, 7),
]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    normals, integers = [], []
    for seed, idx, stream, shape in NORMAL_CASES:
        z = SampleNoise(seed).normal(torch.tensor(idx, dtype=torch.long), stream, shape)
        normals.append(dict(seed=seed, indices=idx, stream=stream, shape=shape, value=z.clone()))
    for seed, idx, stream, high in INTEGER_CASES:
        v = SampleNoise(seed).integers(torch.tensor(idx, dtype=torch.long), stream, high)
        integers.append(dict(seed=seed, indices=idx, stream=stream, high=high, value=v.clone()))
    torch.save({"normal": normals, "integers": integers}, args.out)
    print(f"wrote {len(normals)} normal and {len(integers)} integer cases to {args.out}")


if __name__ == "__main__":
    main()
