"""Cloud paths through blobfile (guided_diffusion/io_util.py).

No bucket is reachable from the test machine, so these tests send local paths through the same
blobfile code with ``GD_IO_BACKEND=blobfile`` and check that every result equals the plain local
path's, byte for byte where the outputs are deterministic.
"""

import glob
import importlib.util
import os
import sys

import numpy as np
import pytest
import torch
from helpers import ROOT, run_proc
from PIL import Image

from guided_diffusion import io_util, logger
from guided_diffusion.image_datasets import ImageDataset, list_image_files_recursively

pytest.importorskip("blobfile")

TRAIN_SCRIPT = os.path.join(ROOT, "scripts", "image_train.py")
TINY = dict(image_size=8, image_channels=1, num_channels=32, channel_mult="1,2", num_res_blocks=1,
            attention_resolutions="4", learn_sigma=True, diffusion_steps=4, noise_schedule="cosine")


@pytest.fixture
def via_blobfile(monkeypatch):
    monkeypatch.setenv(io_util.BACKEND_ENV, "blobfile")
    assert io_util.via_blobfile("/any/local/path")


@pytest.fixture(autouse=True)
def _reset_logger():
    yield
    logger.close()


def _png_folder(root, n=12):
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = os.path.join(root, "a" if i % 2 else "b", "deeper" if i % 3 == 0 else "")
        os.makedirs(sub, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8)).save(os.path.join(sub, f"img{i:02d}.png"))
    return str(root)


def test_is_cloud_and_the_backend_switch(monkeypatch):
    assert io_util.is_cloud("gs://bucket/x.pt") and io_util.is_cloud("az://acct/c/x") and io_util.is_cloud("https://h/x")
    assert not io_util.is_cloud("/tmp/x.pt") and not io_util.is_cloud("runs/gs://x")
    monkeypatch.delenv(io_util.BACKEND_ENV, raising=False)
    assert not io_util.via_blobfile("/tmp/x.pt") and io_util.via_blobfile("gs://b/x")


def test_atomic_write_through_blobfile_is_whole_or_absent(tmp_path, via_blobfile):
    path = str(tmp_path / "out" / "a.npz")
    io_util.makedirs(os.path.dirname(path))
    io_util.save_npz_atomic(path, np.arange(5))
    assert np.array_equal(np.load(path)["arr_0"], np.arange(5))
    with pytest.raises(RuntimeError):
        with io_util.atomic_write(path, "wb") as f:
            f.write(b"partial")
            raise RuntimeError("killed mid-write")
    assert np.array_equal(np.load(path)["arr_0"], np.arange(5))  # the old file is untouched
    assert os.listdir(tmp_path / "out") == ["a.npz"]  # no staged object left behind
    with pytest.raises(RuntimeError):
        with io_util.atomic_write(str(tmp_path / "out" / "new.txt"), "w") as f:
            f.write("partial")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path / "out") == ["a.npz"]


def test_reads_walks_and_tests_equal_the_local_ones(tmp_path, monkeypatch):
    root = _png_folder(tmp_path / "imgs")
    (tmp_path / "f.bin").write_bytes(b"\x00\x01abc")
    local = (list_image_files_recursively(root), io_util.read_bytes(tmp_path / "f.bin"),
             io_util.isfile(tmp_path / "f.bin"), io_util.isdir(root), io_util.isfile(root),
             io_util.exists(tmp_path / "none"), io_util.sha256_file(tmp_path / "f.bin"))
    monkeypatch.setenv(io_util.BACKEND_ENV, "blobfile")
    blob = (list_image_files_recursively(root), io_util.read_bytes(tmp_path / "f.bin"),
            io_util.isfile(tmp_path / "f.bin"), io_util.isdir(root), io_util.isfile(root),
            io_util.exists(tmp_path / "none"), io_util.sha256_file(tmp_path / "f.bin"))
    assert len(local[0]) == 12 and local == blob


def test_datasets_through_blobfile_equal_local(tmp_path, monkeypatch):
    root = _png_folder(tmp_path / "imgs")
    npz = str(tmp_path / "d.npz")
    np.savez(npz, np.random.default_rng(1).integers(0, 256, (6, 8, 8), dtype=np.uint8))

    def items(source):
        ds = ImageDataset(source, 8, image_channels=1)
        return [ds[i][0] for i in range(len(ds))]

    local = items(root) + items(npz)
    monkeypatch.setenv(io_util.BACKEND_ENV, "blobfile")
    blob = items(root) + items(npz)
    assert len(blob) == 18 and all(np.array_equal(a, b) for a, b in zip(local, blob))


def test_cloud_path_without_blobfile_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "blobfile", None)  # import blobfile -> ImportError
    with pytest.raises(ValueError, match=r"^gs://b/m\.pt: .*pip install blobfile"):
        io_util.exists("gs://b/m.pt")


def test_cloud_text_is_written_whole_throttled_and_appends_after_a_restart(tmp_path, via_blobfile):
    path = str(tmp_path / "log.txt")
    log = io_util.CloudText(path, every=3600)
    log.write("one\n")
    log.flush(force=True)
    log.write("two\n")
    log.flush()  # within the throttle: not written yet
    assert open(path).read() == "one\n"
    log.close()
    assert open(path).read() == "one\ntwo\n"
    again = io_util.CloudText(path)
    again.write("three\n")
    again.close()
    assert open(path).read() == "one\ntwo\nthree\n"
    assert sorted(os.listdir(tmp_path)) == ["log.txt"]


def test_logger_files_through_blobfile_equal_local(tmp_path, monkeypatch):
    def run(folder):
        logger.configure(str(folder), format_strs=("log", "csv"))
        for step in range(3):
            logger.logkv("step", step)
            if step == 2:
                logger.logkv("new_key", 0.5)  # widens the header: the file is rewritten
            logger.dumpkvs()
        logger.close()
        text = open(folder / "log.txt").read().splitlines()[1:]  # after the dated first line
        return text, open(folder / "progress.csv", newline="").read()

    local = run(tmp_path / "local")
    monkeypatch.setenv(io_util.BACKEND_ENV, "blobfile")
    blob = run(tmp_path / "blob")
    assert local == blob and "new_key" in local[1].splitlines()[0] and len(local[1].splitlines()) == 4


def _load_train_script():
    spec = importlib.util.spec_from_file_location("image_train_cloud", TRAIN_SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_training_from_a_folder_with_checkpoints_and_resume_through_blobfile(tmp_path, monkeypatch, one_thread):
    """Data folder read, checkpoints and logs written, and a resume read back, all through blobfile:
    the same checkpoints bit for bit as the local run."""
    if torch.cuda.is_available():
        pytest.skip("bit-exact training is a CPU guarantee")
    train = _load_train_script()
    data = _png_folder(tmp_path / "imgs")
    flags = [x for k, v in {**TINY, "data_dir": data, "batch_size": 4, "max_steps": 4, "save_interval": 2,
                            "log_interval": 1, "seed": 5, "ema_rate": "0.9", "lr_anneal_steps": 10}.items()
             for x in (f"--{k}", str(v))]
    train.main(flags + ["--out_dir", str(tmp_path / "local")])
    monkeypatch.setenv(io_util.BACKEND_ENV, "blobfile")
    train.main(flags + ["--out_dir", str(tmp_path / "blob"), "--max_steps", "2"])
    train.main(flags + ["--out_dir", str(tmp_path / "blob"),
                        "--resume_checkpoint", str(tmp_path / "blob" / "model000002.pt")])
    names = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "local" / "*.pt")))
    assert names == sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "blob" / "*.pt")))
    for name in ("model000004.pt", "ema_0.9_000004.pt"):
        a = torch.load(tmp_path / "local" / name, weights_only=True)
        b = torch.load(tmp_path / "blob" / name, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    rows = open(tmp_path / "blob" / "progress.csv").read().splitlines()
    assert len(rows) == 1 + 4  # header + steps 0..3 (two runs appending to one file)
    assert not glob.glob(str(tmp_path / "blob" / ".tmp-*"))


def test_sampling_reads_the_checkpoint_through_blobfile(tmp_path):
    """The demo checkpoint read through blobfile (and the npz written through its atomic path):
    the same samples as the plain local run."""
    argv = ["--timestep_respacing", "ddim2", "--use_ddim", "True", "--num_samples", "3", "--batch_size", "3"]
    script = os.path.join("scripts", "image_sample_1gpu.py")
    a = run_proc(script, argv + ["--out_dir", str(tmp_path / "local")])
    b = run_proc(script, argv + ["--out_dir", str(tmp_path / "blob")], env={io_util.BACKEND_ENV: "blobfile"})
    assert a.returncode == 0 and b.returncode == 0, (a.stderr[-500:], b.stderr[-500:])
    (fa,), (fb,) = glob.glob(str(tmp_path / "local" / "*.npz")), glob.glob(str(tmp_path / "blob" / "*.npz"))
    with np.load(fa) as x, np.load(fb) as y:
        assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)


@pytest.mark.parametrize("flag", ["--out_dir", "--grid"])
def test_sampling_to_a_bucket_is_refused_in_one_line(tmp_path, flag):
    value = "gs://bucket/samples" + (".png" if flag == "--grid" else "")
    out = str(tmp_path / "o")
    argv = ["--timestep_respacing", "ddim2", "--num_samples", "2", "--out_dir", out, flag, value]
    r = run_proc(os.path.join("scripts", "image_sample_1gpu.py"), argv)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"image_sample_1gpu.py: error: {flag} {value}: samples are written to a local folder"), r.stderr
    assert not os.path.exists(out) or not os.listdir(out)
