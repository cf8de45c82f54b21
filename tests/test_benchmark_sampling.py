"""The sampling benchmark runs end to end at a tiny size (a smoke test, not a timing)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_runs_tiny(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "benchmark_sampling.py"), "--config", "tiny",
         "--batch_size", "2", "--steps", "4", "--repeats", "1", "--warmup", "0", "--autocast", "bf16",
         "--channels_last", "True", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr
    summary = json.loads(out.read_text())["summary"]
    for key in ("ts_overhead_ms_per_step_ddim", "ddim_ratio_ours_over_seed", "fast_over_plain_network",
                "images_per_s_fast_ts_ddim"):
        assert key in summary


def test_fast_path_fp32_equals_plain():
    import torch

    from guided_diffusion.sampler.fast_path import apply_fast_path
    from guided_diffusion.script_util import create_model

    torch.manual_seed(0)
    model = create_model(image_size=16, num_channels=32, num_res_blocks=1, attention_resolutions="8",
                         channel_mult="1,2", learn_sigma=True, use_new_attention_order=True, num_heads=2)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        plain = model.set_attention_impl("math")(x, t)
        fast = apply_fast_path(model, device="cpu", attention="sdpa", channels_last=True)(x, t)
        bf16 = apply_fast_path(model, device="cpu", autocast="bf16")(x, t)
    assert (plain - fast).abs().max().item() <= 1e-5
    assert bf16.dtype == torch.float32 and (plain - bf16).abs().max().item() < 0.2


def test_benchmark_noise_only(tmp_path):
    """--noise_only times SampleNoise against torch.randn and prints/stores their ratio."""
    out = tmp_path / "noise.json"
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "benchmark_sampling.py"), "--noise_only", "True",
         "--batch_size", "4", "--noise_repeats", "3", "--device", "cpu", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr
    assert "per-sample noise (SampleNoise)" in res.stdout and "ratio" in res.stdout
    summary = json.loads(out.read_text())["summary"]
    assert summary["image_shape"] == [3, 32, 32] and summary["batch_size"] == 4
    assert summary["noise_ms"] > 0 and summary["randn_ms"] > 0
    assert abs(summary["noise_over_randn"] - summary["noise_ms"] / summary["randn_ms"]) < 1e-9 * summary["noise_over_randn"]
