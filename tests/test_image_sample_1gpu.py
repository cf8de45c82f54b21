"""The paper's sampling command end to end, and every bad-input path (one line, non-zero, no file)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "image_sample_1gpu.py")
# The README command with a narrower network (num_channels 32 instead of 128) so the file stays tiny.
SEED_FLAGS = (
    "--image_size 32 --timestep_respacing ddim5 --num_channels 32 --num_head_channels 32 --num_res_blocks 3 "
    "--attention_resolutions 16,8 --resblock_updown True --use_new_attention_order True --learn_sigma True "
    "--dropout 0.3 --diffusion_steps 1000 --noise_schedule cosine --use_scale_shift_norm True "
    "--batch_size 3 --num_samples 5 --use_ddim True --do_time_shift True --cutoff 300 --window 80 "
    "--data_type cifar10 --model_type adm --progress False"
).split()


@pytest.fixture(scope="module")
def seed_checkpoint(tmp_path_factory):
    flags = dict(image_size=32, num_channels=32, num_head_channels=32, num_res_blocks=3, attention_resolutions="16,8",
                 resblock_updown=True, use_new_attention_order=True, learn_sigma=True, dropout=0.3,
                 noise_schedule="cosine", use_scale_shift_norm=True)
    torch.manual_seed(0)
    model, _ = create_model_and_diffusion(**dict(model_and_diffusion_defaults(), **flags))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def _run(args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_seed_command_writes_upstream_npz(seed_checkpoint, tmp_path):
    out_dir = tmp_path / "new" / "dir"  # created if missing
    res = _run(["--model_path", seed_checkpoint, "--out_dir", str(out_dir), "--progress", "False", *SEED_FLAGS,
                "--grid", str(tmp_path / "grid.png")])
    assert res.returncode == 0, res.stderr
    path = out_dir / "adm_cifar10_ddim5step_80win_300cut.npz"
    with np.load(path) as data:
        assert data.files == ["arr_0"]
        images = data["arr_0"]
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    assert images.std() > 0
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert [p for p in os.listdir(out_dir) if p.startswith(".tmp")] == []
    # same seed, same images; plain DDIM gets upstream's other name
    res = _run(["--model_path", seed_checkpoint, "--out_dir", str(out_dir), "--progress", "False", *SEED_FLAGS,
                "--do_time_shift", "False"])
    assert res.returncode == 0, res.stderr
    assert (out_dir / "adm_cifar10_ddim5step.npz").exists()
    res = _run(["--model_path", seed_checkpoint, "--out_dir", str(tmp_path / "again"), "--progress", "False",
                *SEED_FLAGS])
    with np.load(tmp_path / "again" / "adm_cifar10_ddim5step_80win_300cut.npz") as again:
        assert np.array_equal(again["arr_0"], images)


def test_class_conditional_writes_labels(tmp_path):
    flags = dict(image_size=8, num_channels=32, num_res_blocks=1, attention_resolutions="", channel_mult="1",
                 class_cond=True)
    model, _ = create_model_and_diffusion(**flags)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    res = _run(["--model_path", str(tmp_path / "m.pt"), "--image_size", "8", "--num_channels", "32",
                "--num_res_blocks", "1", "--attention_resolutions", "", "--channel_mult", "1", "--class_cond", "True",
                "--timestep_respacing", "4", "--num_samples", "3", "--out_dir", str(tmp_path), "--progress", "False"])
    assert res.returncode == 0, res.stderr
    with np.load(tmp_path / "adm_cifar_4step.npz") as data:
        assert data.files == ["arr_0", "arr_1"]
        assert data["arr_1"].dtype == np.int64 and data["arr_1"].shape == (3,)
        assert ((data["arr_1"] >= 0) & (data["arr_1"] < 1000)).all()


def _assert_clean_failure(res, out_dir, match):
    assert res.returncode != 0
    # the error is one line; "warning: ..." lines printed before it (e.g. the grid-start warning) are not errors
    lines = [line for line in res.stderr.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr and match in lines[0], lines[0]
    assert not os.path.exists(out_dir) or not any(f.endswith(".npz") for f in os.listdir(out_dir))


def test_mismatched_checkpoint_names_keys_and_flags(seed_checkpoint, tmp_path):
    flags = [f for f in SEED_FLAGS]
    flags[flags.index("--learn_sigma") + 1] = "False"
    flags[flags.index("--resblock_updown") + 1] = "False"
    res = _run(["--model_path", seed_checkpoint, "--out_dir", str(tmp_path / "o"), *flags])
    _assert_clean_failure(res, tmp_path / "o", "does not fit the model flags")
    assert "learn_sigma" in res.stderr and "resblock_updown" in res.stderr
    assert "out.2.weight" in res.stderr


@pytest.mark.parametrize("extra, match", [
    (["--model_path", "/nonexistent/model.pt"], "no such file"),
    (["--timestep_respacing", "ddim333"], "no integer stride"),
    (["--timestep_respacing", "ddimx"], "ddimN"),
    (["--window", "-4"], "--window"),
    (["--use_ddim", "perhaps"], "--use_ddim"),
    (["--num_samples", "0"], "--num_samples"),
])
def test_bad_input_errors(seed_checkpoint, tmp_path, extra, match):
    args = ["--model_path", seed_checkpoint, "--out_dir", str(tmp_path / "o"), *SEED_FLAGS, *extra]
    _assert_clean_failure(_run(args), tmp_path / "o", match)


def test_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    res = _run(["--model_path", str(bad), "--out_dir", str(tmp_path / "o"), *SEED_FLAGS])
    _assert_clean_failure(res, tmp_path / "o", "not a readable PyTorch weights file")


def test_nan_model_stops_without_output(seed_checkpoint, tmp_path):
    sd = torch.load(seed_checkpoint, weights_only=True)
    sd["out.2.bias"] = torch.full_like(sd["out.2.bias"], float("nan"))
    torch.save(sd, tmp_path / "nan.pt")
    res = _run(["--model_path", str(tmp_path / "nan.pt"), "--out_dir", str(tmp_path / "o"), *SEED_FLAGS])
    _assert_clean_failure(res, tmp_path / "o", "is not finite")
    assert "sample 0" in res.stderr and "window=80" in res.stderr


def test_default_demo_model_with_compare_grid(tmp_path):
    """No --model_path and no model flags: the bundled demo model samples and writes the comparison PNG."""
    res = _run(["--num_samples", "4", "--batch_size", "4", "--use_ddim", "True", "--timestep_respacing", "ddim4",
                "--do_time_shift", "True", "--window", "40", "--cutoff", "300", "--out_dir", str(tmp_path),
                "--compare_grid", str(tmp_path / "cmp.png"), "--grid_size", "4", "--progress", "False"])
    assert res.returncode == 0, res.stderr
    with np.load(tmp_path / "demo_fmnist32_ddim4step_40win_300cut.npz") as data:
        images = data["arr_0"]
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images[..., 0], images[..., 2])  # grey model, replicated to RGB
    from PIL import Image

    assert Image.open(tmp_path / "cmp.png").width >= 800


def test_model_flags_without_checkpoint_is_an_error(tmp_path):
    res = _run(["--image_size", "32", "--num_samples", "2", "--out_dir", str(tmp_path / "o")])
    _assert_clean_failure(res, tmp_path / "o", "--model_path")


# ------------------------------------------------------------------ corrections, solvers, trace (demo model)
DEMO = ["--num_samples", "3", "--batch_size", "3", "--timestep_respacing", "ddim6", "--progress", "False"]


def test_corrections_at_identity_write_the_plain_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run([*DEMO, "--use_ddim", "True", "--out_dir", str(a)]).returncode == 0
    res = _run([*DEMO, "--use_ddim", "True", "--out_dir", str(b), "--eps_scale", "1", "--eps_scale_k", "0",
                "--dcw_low", "0", "--dcw_high", "0"])
    assert res.returncode == 0, res.stderr
    name = "demo_fmnist32_ddim6step.npz"
    assert (a / name).read_bytes() == (b / name).read_bytes()


def test_correction_and_solver_names_trace_and_resume_refusal(tmp_path):
    flags = [*DEMO, "--use_ddim", "True", "--do_time_shift", "True", "--window", "40", "--cutoff", "300",
             "--ts_rule", "adm-data", "--eps_scale", "1.004", "--dcw_low", "0.02", "--save_trace", "True",
             "--out_dir", str(tmp_path), "--keep_parts", "True"]
    res = _run(flags)
    assert res.returncode == 0, res.stderr
    name = "demo_fmnist32_ddim6step_40win_300cut_adm-data_es1.004_dcw0.02"
    assert f"wrote {tmp_path / name}.npz" in res.stdout and f"wrote {tmp_path / name}_trace.npz" in res.stdout
    with np.load(tmp_path / f"{name}_trace.npz") as z:
        ts, nominal, lo, hi = z["timesteps"], z["nominal"], z["window_lo"], z["window_hi"]
        from guided_diffusion.script_util import create_gaussian_diffusion

        grid = create_gaussian_diffusion(timestep_respacing="ddim6").timestep_map[::-1]
        assert ts.shape == (3, 6) and ts.dtype == np.int32 and list(nominal) == grid and grid[-1] == 0
        shifted = ts >= 0
        assert not shifted[:, 0].any() and shifted[:, 1:4].all() and not shifted[:, 4:].any()  # cutoff 300
        assert ((ts >= lo) & (ts <= hi))[shifted].all()
        on_edge = ((ts == lo) | (ts == hi))[shifted].mean()
        assert abs(float(z["edge_fraction"]) - on_edge) < 1e-12
    # a changed correction value is refused when resuming the same output
    res = _run([*flags[:-2], "--eps_scale", "1.004", "--dcw_low", "0.03"])
    assert res.returncode == 0  # another value is another file name: no clash
    res = _run([*DEMO, "--use_ddim", "True", "--solver", "dpm++2m", "--out_dir", str(tmp_path)])
    assert res.returncode == 0 and (tmp_path / "demo_fmnist32_ddim6step_dpm++2m.npz").exists()


@pytest.mark.parametrize("extra, match", [
    (["--eps_scale", "0"], "--eps_scale"),
    (["--eps_scale", "-1"], "--eps_scale"),
    (["--eps_scale", "nan"], "--eps_scale"),
    (["--eps_scale_k", "-1"], "--eps_scale"),
    (["--dcw_low", "nan"], "--dcw_low"),
    (["--solver", "euler"], "--solver"),
    (["--solver", "ddpm", "--eta", "0.5"], "--eta"),
    (["--ts_rule", "adm-date"], "--ts_rule"),
])
def test_bad_sampler_values(tmp_path, extra, match):
    _assert_clean_failure(_run([*DEMO, "--use_ddim", "True", "--out_dir", str(tmp_path / "o"), *extra]),
                          tmp_path / "o", match)


def test_dcw_needs_even_image_size(tmp_path):
    flags = dict(image_size=7, num_channels=32, num_res_blocks=1, attention_resolutions="", channel_mult="1")
    model, _ = create_model_and_diffusion(**flags)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    args = ["--model_path", str(tmp_path / "m.pt"), "--timestep_respacing", "3", "--num_samples", "1",
            "--out_dir", str(tmp_path / "o"), "--dcw_low", "0.05", "--progress", "False"]
    for k, v in flags.items():
        args += [f"--{k}", str(v)]
    _assert_clean_failure(_run(args), tmp_path / "o", "--dcw_low")
