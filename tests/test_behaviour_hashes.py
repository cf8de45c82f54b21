"""Fixed sampling commands write the same npz bytes as the code the hashes were recorded with.

The hashes in tests/data/behaviour_hashes.json were recorded with tests/tools/record_behaviour_hashes.py.
The bytes depend, besides the code, on torch's major.minor version and on the CPU kernel set torch
dispatches to (``torch.backends.cpu.get_cpu_capability()``: AVX2 and AVX-512 float32 convolutions
round differently), so they are kept per key "MAJOR.MINOR/CAPABILITY" and the commands run on the
CPU. The test runs wherever its key is recorded and says why it skips elsewhere (add a machine's
key with the tool's --add_machine; an AVX-512 machine also checks the AVX2 key with
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``, see ``behaviour_cases.machine_key``). Demo-model cases are compared only while the bundled demo
checkpoint is the one they were recorded with (a retrained demo model changes its samples by design).
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from behaviour_cases import CASES, ROOT, demo_checkpoint_sha256, machine_key, make_paper_checkpoint

pytestmark = pytest.mark.integration

with open(os.path.join(ROOT, "tests", "data", "behaviour_hashes.json")) as _f:
    RECORDED = json.load(_f)


def test_every_case_is_recorded_for_every_key():
    assert set(RECORDED["files"]) == set(CASES)
    for key, hashes in RECORDED["sha256"].items():
        assert set(hashes) == set(CASES), key
    assert {name: case.filename for name, case in CASES.items()} == RECORDED["files"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_npz_bytes_unchanged(name, tmp_path):
    case = CASES[name]
    key = machine_key()
    if key not in RECORDED["sha256"]:
        pytest.skip(f"no npz hashes recorded for {key} (torch major.minor / CPU kernel set; recorded: "
                    f"{', '.join(sorted(RECORDED['sha256']))}); add them with "
                    f"tests/tools/record_behaviour_hashes.py --add_machine")
    if not case.paper_model and demo_checkpoint_sha256() != RECORDED["demo_checkpoint_sha256"]:
        pytest.skip("the bundled demo checkpoint changed since the hashes were recorded")
    ckpt = make_paper_checkpoint(str(tmp_path / "paper.pt"))
    out_dir = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # the CPU bytes, also on a GPU machine
    res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "image_sample_1gpu.py"),
                          *case.argv(ckpt, str(out_dir))], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    with open(out_dir / case.filename, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert digest == RECORDED["sha256"][key][name], f"{name} on {key}"
