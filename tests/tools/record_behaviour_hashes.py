"""Record the npz bytes (SHA-256) that fixed sampling commands write, for tests/test_behaviour_hashes.py.

Run once before a refactor of the sampling path (the hashes in tests/data/behaviour_hashes.json were made
with the code of commit 18d0a45, before the architecture refactor):

    python tests/tools/record_behaviour_hashes.py --out tests/data/behaviour_hashes.json

Float32 convolutions round differently on other CPUs (another kernel set: AVX2 vs AVX-512), so the
same code can write other bytes there. On such a machine, with code that still writes the recorded
bytes where they were recorded, add its hashes as accepted alternatives (the test takes any of them):

    python tests/tools/record_behaviour_hashes.py --out tests/data/behaviour_hashes.json --add_alternatives
"""

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from behaviour_cases import CASES, demo_checkpoint_sha256, make_paper_checkpoint  # noqa: E402


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True)
    p.add_argument("--add_alternatives", action="store_true",
                   help="keep the recorded hashes in --out and add this machine's as alternatives")
    args = p.parse_args()
    result = {"torch": torch.__version__, "demo_checkpoint_sha256": demo_checkpoint_sha256(), "cases": {}}
    if args.add_alternatives:
        with open(args.out) as f:
            recorded = json.load(f)
        if recorded["torch"] != result["torch"] or recorded["demo_checkpoint_sha256"] != result["demo_checkpoint_sha256"]:
            sys.exit("--add_alternatives: torch or the demo checkpoint differ from the recorded ones")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_paper_checkpoint(os.path.join(tmp, "paper.pt"))
        for name, case in CASES.items():
            out_dir = os.path.join(tmp, name)
            argv = case.argv(ckpt, out_dir)
            env = dict(os.environ, OMP_NUM_THREADS="1")
            res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "image_sample_1gpu.py"), *argv],
                                 capture_output=True, text=True, env=env)
            if res.returncode != 0:
                sys.exit(f"{name}: {res.stderr}")
            digest = sha256(os.path.join(out_dir, case.filename))
            if args.add_alternatives:
                entry = recorded["cases"][name]
                if digest != entry["sha256"] and digest not in entry.get("sha256_alternatives", []):
                    entry.setdefault("sha256_alternatives", []).append(digest)
                    entry.setdefault("alternatives_from", []).append(
                        f"{platform.processor() or platform.machine()}, torch cpu capability "
                        f"{torch.backends.cpu.get_cpu_capability()}")
                result["cases"][name] = entry
            else:
                result["cases"][name] = {"file": case.filename, "sha256": digest}
            print(name, result["cases"][name])
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
