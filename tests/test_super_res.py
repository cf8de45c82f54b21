"""Super-resolution: the upsampler factory (official 64->256 keys), the training batches (area-downsampled
conditioning), scripts/super_res_train.py and scripts/super_res_sample.py end to end (time shift, base
samples cycled per sample, kill + resume, bad inputs)."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from guided_diffusion.sampler.conditioning import LowResInputs
from guided_diffusion.image_datasets import ImageDataset, LowResBatcher, StepBatcher
from guided_diffusion.script_util import sr_create_model_and_diffusion, sr_model_and_diffusion_defaults
from official_configs import OFFICIAL_UPSAMPLER_CONFIGS
from helpers import EXIT_AFTER_PARTS, ROOT, argv_of, run_proc

TRAIN = os.path.join(ROOT, "scripts", "super_res_train.py")
SAMPLE = os.path.join(ROOT, "scripts", "super_res_sample.py")
MANIFESTS = json.load(open(os.path.join(ROOT, "tests", "data", "guidance_manifests.json")))
MODEL = dict(large_size=16, small_size=8, num_channels=32, channel_mult="1,2", num_res_blocks=1,
             attention_resolutions="8", diffusion_steps=40, learn_sigma=True, class_cond=True)
NUM = 5
NPZ = "adm_cifar_ddim4step_4win_5cut_sr8to16.npz"


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ factory
def test_official_upsampler_keys_shapes_and_count():
    """64->256 upsampler: keys/shapes equal the committed manifest (made by tests/tools/make_guidance_manifests.py
    from our factory; NOT compared with the released file, which was not available offline)."""
    with torch.device("meta"):
        model, diffusion = sr_create_model_and_diffusion(**OFFICIAL_UPSAMPLER_CONFIGS["upsampler_64_256"])
    sd = model.state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == MANIFESTS["upsampler_64_256"]
    assert len(sd) == 567 and sum(v.numel() for v in sd.values()) == 311_795_910
    assert sd["input_blocks.0.0.weight"].shape == (192, 6, 3, 3)  # x and the upsampled low-res image
    assert sd["out.2.weight"].shape == (6, 192, 3, 3) and sd["label_emb.weight"].shape == (1000, 768)
    assert model.channel_mult == (1, 1, 2, 2, 4, 4)


@pytest.mark.parametrize("large, mult", [(64, (1, 2, 3, 4)), (256, (1, 1, 2, 2, 4, 4)), (512, (1, 1, 2, 2, 4, 4)),
                                         (32, (1, 2, 2, 2))])
def test_channel_mult_by_large_size(large, mult):
    kw = {k: v for k, v in sr_model_and_diffusion_defaults().items() if k not in ("large_size", "small_size")}
    with torch.device("meta"):
        model, _ = sr_create_model_and_diffusion(large, large // 4, **{**kw, "attention_resolutions": ""})
    assert model.channel_mult == mult


def test_training_batches_downsample_by_area():
    rng = np.random.RandomState(0)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"sr_batches_{os.getpid()}.npz")
    np.savez(path, (rng.rand(6, 16, 16, 3) * 255).astype(np.uint8))
    try:
        data = LowResBatcher(StepBatcher(ImageDataset(path, 16), 4, seed=0), 8)
        x, cond = data.batch(1)
        assert cond["low_res"].shape == (4, 3, 8, 8)
        assert torch.allclose(cond["low_res"], F.avg_pool2d(x, 2), atol=1e-6)  # area = 2x2 mean here
        assert data.batch_size == 4
    finally:
        os.remove(path)


def test_low_res_inputs_cycle_and_labels():
    images = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2, 1) * 20
    inputs = LowResInputs(images, np.array([7, 8, 9]), image_channels=3)
    labels, kw = inputs.inputs(torch.tensor([0, 4, 5]), None, model_num_classes=1000)
    assert labels.tolist() == [7, 8, 9]
    assert kw["low_res"].shape == (3, 3, 2, 2)
    assert torch.allclose(kw["low_res"][1, 2], torch.from_numpy(images[1, :, :, 0]).float() / 127.5 - 1)
    _, kw = inputs.inputs(torch.tensor([1]), None, model_num_classes=None)
    assert "y" not in kw
    with pytest.raises(ValueError, match="no arr_1"):
        LowResInputs(images).inputs(torch.tensor([0]), None, model_num_classes=1000)


# ------------------------------------------------------------------ scripts
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sr")
    rng = np.random.RandomState(2)
    hi, lo = str(folder / "hi.npz"), str(folder / "lo.npz")
    np.savez(hi, (rng.rand(12, 16, 16, 3) * 255).astype(np.uint8), rng.randint(0, 5, 12))
    np.savez(lo, (rng.rand(3, 8, 8, 3) * 255).astype(np.uint8), np.array([4, 1, 3]))
    return {"dir": folder, "hi": hi, "lo": lo}


@pytest.fixture(scope="module")
def trained(files):
    out = files["dir"] / "train"
    res = run_proc(TRAIN, argv_of({**MODEL, "data_dir": files["hi"], "batch_size": 4, "max_steps": 2,
                                   "log_interval": 1, "out_dir": str(out)}))
    assert res.returncode == 0, res.stderr
    assert (out / "model000002.pt").exists() and (out / "ema_0.9999_000002.pt").exists()
    return str(out / "ema_0.9999_000002.pt")


def sample_flags(files, model_path, out_dir, **extra):
    return argv_of({**MODEL, "model_path": model_path, "base_samples": files["lo"], "timestep_respacing": "ddim4",
                    "use_ddim": True, "do_time_shift": True, "window": 4, "cutoff": 5, "num_samples": NUM,
                    "batch_size": 2, "progress": False, "out_dir": out_dir, **extra})


@pytest.mark.integration
def test_train_then_sample_kill_and_resume(files, trained, tmp_path):
    import runpy

    main = runpy.run_path(SAMPLE)["main"]
    ref = main(sample_flags(files, trained, str(tmp_path / "ref"), batch_size=3))
    z = np.load(ref)
    assert z["arr_0"].shape == (NUM, 16, 16, 3)
    assert z["arr_1"].tolist() == [4, 1, 3, 4, 1]  # sample k upsamples base image k mod 3
    out = tmp_path / "run"
    res = run_proc(EXIT_AFTER_PARTS, ["1", SAMPLE, *sample_flags(files, trained, str(out))])
    assert res.returncode == 137, res.stderr
    res = run_proc(SAMPLE, sample_flags(files, trained, str(out), batch_size=3))
    assert res.returncode == 0, res.stderr
    assert (out / NPZ).read_bytes() == open(ref, "rb").read()
    meta = json.loads((out / NPZ.replace(".npz", ".json")).read_text())
    assert len(meta["base_samples_sha256"]) == 64
    # the low-res input matters
    other = tmp_path / "other_lo.npz"
    np.savez(other, 255 - np.load(files["lo"])["arr_0"], np.array([4, 1, 3]))
    diff = main(sample_flags(files, trained, str(tmp_path / "other"), base_samples=str(other)))
    assert not np.array_equal(np.load(diff)["arr_0"], z["arr_0"])


@pytest.mark.integration
@pytest.mark.parametrize("change, expect", [
    (dict(base_samples="/nonexistent.npz"), "--base_samples /nonexistent.npz: no such file"),
    (dict(small_size=4), "expected (N, 4, 4, C)"),
    (dict(num_channels=64), "does not fit the model flags"),
    (dict(base_samples=""), "--base_samples is empty"),
])
def test_sample_bad_inputs_one_line_exit_2(files, trained, tmp_path, change, expect):
    res = run_proc(SAMPLE, sample_flags(files, trained, str(tmp_path), **change))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], res.stderr
    assert not any(name.endswith(".npz") for name in os.listdir(tmp_path))


@pytest.mark.integration
def test_train_bad_sizes(files, tmp_path):
    res = run_proc(TRAIN, argv_of({**MODEL, "small_size": 16, "data_dir": files["hi"], "out_dir": str(tmp_path)}))
    assert res.returncode == 2
    assert "--small_size (16) must be smaller than --large_size (16)" in res.stderr.strip()
    assert len(res.stderr.strip().splitlines()) == 1
