"""Record the npz bytes (SHA-256) that fixed sampling commands write, for tests/test_behaviour_hashes.py.

The bytes depend on the code, on torch's major.minor version and on the CPU kernel set torch picks
(``torch.backends.cpu.get_cpu_capability()``: float32 convolutions round differently with AVX2 and
AVX-512), so the hashes are kept per key "TORCH_MAJOR.MINOR/CAPABILITY" (sampling on the CPU).
Run once before a refactor of the sampling path, on the code the refactor must not change:

    python tests/tools/record_behaviour_hashes.py --out tests/data/behaviour_hashes.json

On a machine whose key is not recorded yet, with code that still writes the recorded bytes where
they were recorded, add its hashes under its own key (the recorded keys are kept as they are):

    python tests/tools/record_behaviour_hashes.py --out tests/data/behaviour_hashes.json --add_machine
"""

import argparse
import hashlib
import json
import os
import platform
import runpy
import subprocess
import sys
import tempfile

import torch

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)
CASES_MODULE = runpy.run_path(os.path.join(TESTS, "behaviour_cases.py"))  # tests/ is not a package
CASES, demo_checkpoint_sha256, make_paper_checkpoint, machine_key = (
    CASES_MODULE[k] for k in ("CASES", "demo_checkpoint_sha256", "make_paper_checkpoint", "machine_key"))


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the hashes file (tests/data/behaviour_hashes.json)")
    p.add_argument("--add_machine", action="store_true",
                   help="keep the hashes in --out and add this machine's key (refused if it is recorded)")
    args = p.parse_args()
    key = machine_key()
    if args.add_machine:
        with open(args.out) as f:
            result = json.load(f)
        if result["demo_checkpoint_sha256"] != demo_checkpoint_sha256():
            sys.exit("--add_machine: the bundled demo checkpoint differs from the recorded one")
        if key in result["sha256"]:
            sys.exit(f"--add_machine: {key} is recorded already; those are the bytes the code must reproduce")
    else:
        result = {"demo_checkpoint_sha256": demo_checkpoint_sha256(), "files": {}, "sha256": {}, "recorded_with": {}}
    hashes = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_paper_checkpoint(os.path.join(tmp, "paper.pt"))
        for name, case in CASES.items():
            out_dir = os.path.join(tmp, name)
            env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
            res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "image_sample_1gpu.py"),
                                  *case.argv(ckpt, out_dir)], capture_output=True, text=True, env=env)
            if res.returncode != 0:
                sys.exit(f"{name}: {res.stderr}")
            hashes[name] = sha256(os.path.join(out_dir, case.filename))
            result["files"][name] = case.filename
            print(key, name, hashes[name])
    result["sha256"][key] = hashes
    result["recorded_with"][key] = f"torch {torch.__version__}, {platform.machine()}"
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
