"""Tests for the dataset preparation scripts in datasets/ (synthetic inputs, real formats)."""

import gzip
import importlib.util
import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = os.path.join(REPO, "datasets")
SCRIPTS = ["cifar10", "celeba64_npz", "lsun", "imagenet32_npz", "ffhq128_npz", "fashion_mnist"]

import guided_diffusion.data.prep as _common  # noqa: E402

try:
    import lmdb
except ImportError:
    lmdb = None


def run(script, *args, env=None):
    full_env = dict(os.environ)
    full_env.pop("PREP_DEBUG", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, os.path.join(DATASETS, script + ".py"), *map(str, args)],
        capture_output=True, text=True, timeout=60, env=full_env,
    )


def assert_clean_error(proc, *fragments):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert "error" in err
    for frag in fragments:
        assert frag in err, err


def listing(path):
    """Everything under path (to check that failed runs leave nothing behind)."""
    out = []
    for root, dirs, files in os.walk(path):
        out += [os.path.relpath(os.path.join(root, n), path) for n in dirs + files]
    return sorted(out)


# ------------------------------------------------------------------------------- common


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_on_every_flag(script, monkeypatch):
    parsers = []
    spec = importlib.util.spec_from_file_location(f"datasets_{script}", os.path.join(DATASETS, script + ".py"))
    mod = importlib.util.module_from_spec(spec)  # datasets/ holds scripts, not a package
    spec.loader.exec_module(mod)
    real = mod.make_parser

    def spy(description):
        p = real(description)
        parsers.append(p)
        return p

    monkeypatch.setattr(mod, "make_parser", spy)
    with pytest.raises(SystemExit) as exc:
        mod.main(["--help"])
    assert exc.value.code == 0
    for action in parsers[0]._actions:
        assert action.help, f"{script}: {action.option_strings} has no help"


def test_write_npz_chunked_roundtrip(tmp_path):
    chunks = [np.full((k, 2, 3), k, np.uint8) for k in (1, 4, 2)]
    path = str(tmp_path / "c.npz")
    _common.write_npz(path, [("arr_0", (7, 2, 3), np.uint8, iter(chunks)),
                             ("arr_1", np.arange(7))])
    d = np.load(path)
    np.testing.assert_array_equal(d["arr_0"], np.concatenate(chunks))
    np.testing.assert_array_equal(d["arr_1"], np.arange(7))
    with pytest.raises(_common.PrepError):
        _common.write_npz(str(tmp_path / "w.npz"), [("arr_0", (9, 2, 3), np.uint8, chunks)])


def test_outputs_abort_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with _common.Outputs() as out:
            open(out.file(str(tmp_path / "new" / "x.npz"), ".npz"), "w").write("x")
            d = out.dir(str(tmp_path / "pngs"))
            open(os.path.join(d, "a.png"), "w").write("x")
            raise RuntimeError("boom")
    assert listing(tmp_path) == []
    with _common.Outputs() as out:
        open(out.file(str(tmp_path / "x.npz"), ".npz"), "w").write("1")
    with pytest.raises(_common.PrepError, match="overwrite"):
        _common.Outputs().file(str(tmp_path / "x.npz"))
    with _common.Outputs(overwrite=True) as out:
        open(out.file(str(tmp_path / "x.npz"), ".npz"), "w").write("2")
    assert open(tmp_path / "x.npz").read() == "2" and listing(tmp_path) == ["x.npz"]


def test_restricted_pickle_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(_common.PrepError, match="refusing"):
        _common.load_pickle_batch(str(path))


# ------------------------------------------------------------------------------- CIFAR-10

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]


def _planes(images):
    """(N, S, S, 3) -> (N, 3*S*S) rows of R, G, B planes (the CIFAR pickle layout)."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _cifar_dir(tmp_path, per_batch=3, n_test=2):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.RandomState(0)
    imgs, labels = {}, {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = n_test if name == "test_batch" else per_batch
        x = rng.randint(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        y = [int(v) for v in rng.randint(0, 10, n)]
        imgs[name], labels[name] = x, y
        if i % 2:  # python-2 style: bytes keys, as in the official files loaded in python 3
            obj = {b"batch_label": b"x", b"data": _planes(x), b"labels": y}
        else:
            obj = {"batch_label": "x", "data": _planes(x), "labels": y}
        (d / name).write_bytes(pickle.dumps(obj, protocol=2))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in
                                                                    CIFAR_CLASSES]}, protocol=2))
    return d, imgs, labels


def test_cifar10_pngs_and_npz(tmp_path):
    src, imgs, labels = _cifar_dir(tmp_path)
    out = tmp_path / "out"
    proc = run("cifar10", "--data_dir", tmp_path, "--out_dir", out)
    assert proc.returncode == 0, proc.stderr
    train_x = np.concatenate([imgs[f"data_batch_{k}"] for k in range(1, 6)])
    train_y = sum((labels[f"data_batch_{k}"] for k in range(1, 6)), [])
    files = sorted(os.listdir(out / "cifar_train"))
    assert files == sorted(f"{CIFAR_CLASSES[y]}_{i:05d}.png" for i, y in enumerate(train_y))
    for i, y in enumerate(train_y):
        png = np.asarray(Image.open(out / "cifar_train" / f"{CIFAR_CLASSES[y]}_{i:05d}.png"))
        np.testing.assert_array_equal(png, train_x[i])  # RGB order kept
    test_files = sorted(os.listdir(out / "cifar_test"))
    assert test_files == sorted(f"{CIFAR_CLASSES[y]}_{15 + i:05d}.png"
                                for i, y in enumerate(labels["test_batch"]))
    d = np.load(out / "cifar10_train.npz")
    assert d["arr_0"].shape == (15, 32, 32, 3) and d["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(d["arr_0"], train_x)
    np.testing.assert_array_equal(d["arr_1"], train_y)
    assert listing(out) == sorted(["cifar_train", "cifar_test", "cifar10_train.npz"]
                                  + [f"cifar_train/{f}" for f in files]
                                  + [f"cifar_test/{f}" for f in test_files])


def test_cifar10_no_png_and_test_npz(tmp_path):
    src, imgs, _ = _cifar_dir(tmp_path)
    out = tmp_path / "o"
    proc = run("cifar10", "--data_dir", src, "--out_dir", out, "--no_png",
               "--ref_npz", out / "ref.npz", "--test_npz", out / "test.npz")
    assert proc.returncode == 0, proc.stderr
    assert listing(out) == ["ref.npz", "test.npz"]
    np.testing.assert_array_equal(np.load(out / "test.npz")["arr_0"], imgs["test_batch"])


def test_cifar10_errors(tmp_path):
    out = tmp_path / "out"
    assert_clean_error(run("cifar10", "--data_dir", tmp_path / "missing", "--out_dir", out),
                       "missing")
    assert_clean_error(run("cifar10", "--data_dir", tmp_path, "--out_dir", out),
                       "data_batch_1")
    src, _, _ = _cifar_dir(tmp_path)
    (src / "data_batch_3").write_bytes(b"garbage, not a pickle")
    assert_clean_error(run("cifar10", "--data_dir", src, "--out_dir", out), "data_batch_3")
    (src / "data_batch_3").write_bytes(pickle.dumps({"data": np.zeros((2, 100), np.uint8),
                                                     "labels": [0, 1]}))
    assert_clean_error(run("cifar10", "--data_dir", src, "--out_dir", out), "data_batch_3")
    assert not out.exists()
    (tmp_path / "ok").mkdir()
    _cifar_dir(tmp_path / "ok")  # fine input; existing output refused without --overwrite
    out.mkdir()
    (out / "cifar10_train.npz").write_bytes(b"old")
    proc = run("cifar10", "--data_dir", tmp_path / "ok", "--out_dir", out)
    assert_clean_error(proc, "overwrite")
    assert listing(out) == ["cifar10_train.npz"]


# ------------------------------------------------------------------------------- Fashion-MNIST


def _idx(path, arr, gz):
    header = (0x0800 + arr.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        data = gzip.compress(data)
        path = str(path) + ".gz"
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def fmnist_dir(tmp_path):
    d = tmp_path / "fm"
    d.mkdir()
    rng = np.random.RandomState(0)
    data = {}
    for split, n, gz in (("train", 7, False), ("t10k", 5, True)):
        x = rng.randint(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.randint(0, 10, n).astype(np.uint8)
        _idx(d / f"{split}-images-idx3-ubyte", x, gz)
        _idx(d / f"{split}-labels-idx1-ubyte", y, gz)
        data[split] = (x, y)
    return d, data


def test_fashion_mnist_grey_and_rgb(tmp_path, fmnist_dir):
    d, data = fmnist_dir
    proc = run("fashion_mnist", "--data_dir", d, "--out", tmp_path / "tr.npz")
    assert proc.returncode == 0, proc.stderr
    z = np.load(tmp_path / "tr.npz")
    x, y = data["train"]
    assert z["arr_0"].shape == (7, 32, 32, 1) and z["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(z["arr_0"][:, 2:30, 2:30, 0], x)
    assert z["arr_0"][:, :2].max() == 0 and z["arr_0"][:, :, 30:].max() == 0
    np.testing.assert_array_equal(z["arr_1"], y)
    proc = run("fashion_mnist", "--data_dir", d, "--split", "test", "--rgb", "--no_labels",
               "--out", tmp_path / "te.npz")
    assert proc.returncode == 0, proc.stderr
    z = np.load(tmp_path / "te.npz")
    assert z.files == ["arr_0"] and z["arr_0"].shape == (5, 32, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(z["arr_0"][:, 2:30, 2:30, c], data["t10k"][0])
    proc = run("fashion_mnist", "--data_dir", d, "--resize", "bicubic", "--limit", "3",
               "--out", tmp_path / "b.npz")
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "b.npz")["arr_0"].shape == (3, 32, 32, 1)


def test_fashion_mnist_feeds_load_data(tmp_path, fmnist_dir):
    from guided_diffusion.image_datasets import load_data
    d, data = fmnist_dir
    assert run("fashion_mnist", "--data_dir", d, "--out", tmp_path / "tr.npz").returncode == 0
    x, cond = next(load_data(data_dir=str(tmp_path / "tr.npz"), batch_size=7, image_size=32,
                             image_channels=1, class_cond=True, deterministic=True,
                             random_flip=False))
    assert x.shape == (7, 1, 32, 32)
    np.testing.assert_array_equal(cond["y"].numpy(), data["train"][1])
    np.testing.assert_allclose(x[:, 0, 2:30, 2:30].numpy(), data["train"][0] / 127.5 - 1,
                               atol=1e-6)


def test_fashion_mnist_errors(tmp_path, fmnist_dir):
    d, _ = fmnist_dir
    out = tmp_path / "o.npz"
    assert_clean_error(run("fashion_mnist", "--data_dir", tmp_path / "none", "--out", out),
                       "none")
    (d / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 12)
    assert_clean_error(run("fashion_mnist", "--data_dir", d, "--out", out), "magic")
    _idx(d / "train-images-idx3-ubyte", np.zeros((7, 28, 28), np.uint8), False)
    raw = (d / "train-images-idx3-ubyte").read_bytes()
    (d / "train-images-idx3-ubyte").write_bytes(raw[:-10])
    assert_clean_error(run("fashion_mnist", "--data_dir", d, "--out", out), "header")
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    assert_clean_error(run("fashion_mnist", "--data_dir", d, "--split", "test", "--out", out),
                       "t10k-images")
    os.remove(d / "t10k-labels-idx1-ubyte.gz")
    assert_clean_error(run("fashion_mnist", "--data_dir", d, "--split", "test", "--out", out),
                       "t10k-labels")
    assert_clean_error(run("fashion_mnist", "--data_dir", d, "--out", tmp_path / "o.bin"),
                       ".npz")
    assert not [f for f in os.listdir(tmp_path) if f != "fm"]


# ------------------------------------------------------------------------------- ImageNet32


def _inet_batch(path, x, labels_1based):
    obj = {"data": _planes(x), "labels": list(labels_1based), "mean": np.zeros(3072)}
    path.write_bytes(pickle.dumps(obj))


def test_imagenet32(tmp_path):
    d = tmp_path / "in32"
    d.mkdir()
    rng = np.random.RandomState(0)
    xs, ys = [], []
    for k in (1, 2, 10):  # numeric, not lexical, order: 1, 2, 10
        x = rng.randint(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        y = rng.randint(1, 1001, 3)
        _inet_batch(d / f"train_data_batch_{k}", x, y)
        xs.append(x)
        ys.append(y)
    _inet_batch(d / "val_data", xs[0][:2], [1, 1000])
    proc = run("imagenet32_npz", "--data_dir", d, "--out", tmp_path / "tr.npz")
    assert proc.returncode == 0, proc.stderr
    z = np.load(tmp_path / "tr.npz")
    np.testing.assert_array_equal(z["arr_0"], np.concatenate(xs))
    np.testing.assert_array_equal(z["arr_1"], np.concatenate(ys) - 1)
    proc = run("imagenet32_npz", "--data_dir", d, "--split", "val", "--out", tmp_path / "v.npz")
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "v.npz")["arr_1"].tolist() == [0, 999]
    proc = run("imagenet32_npz", "--data_dir", d, "--limit", "4", "--out", tmp_path / "l.npz")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "l.npz")["arr_0"],
                                  np.concatenate(xs)[:4])


def test_imagenet32_errors(tmp_path):
    d = tmp_path / "in32"
    d.mkdir()
    out = tmp_path / "o.npz"
    assert_clean_error(run("imagenet32_npz", "--data_dir", d, "--out", out), "train_data_batch")
    _inet_batch(d / "train_data_batch_1", np.zeros((2, 32, 32, 3), np.uint8), [0, 5])
    assert_clean_error(run("imagenet32_npz", "--data_dir", d, "--out", out), "1-based")
    (d / "train_data_batch_1").write_bytes(b"\x80\x04junk")
    assert_clean_error(run("imagenet32_npz", "--data_dir", d, "--out", out), "train_data_batch_1")
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["in32"]


# ------------------------------------------------------------------------------- FFHQ, CelebA


def test_ffhq128(tmp_path):
    d = tmp_path / "thumbs"
    (d / "00000").mkdir(parents=True)
    (d / "01000").mkdir()
    Image.new("RGB", (128, 128), (255, 0, 0)).save(d / "00000" / "00000.png")
    Image.new("RGB", (128, 128), (0, 255, 0)).save(d / "00000" / "00001.png")
    Image.new("RGB", (256, 256), (0, 0, 255)).save(d / "01000" / "01000.png")
    proc = run("ffhq128_npz", "--data_dir", d, "--out", tmp_path / "f.npz")
    assert proc.returncode == 0, proc.stderr
    x = np.load(tmp_path / "f.npz")["arr_0"]
    assert x.shape == (3, 128, 128, 3) and x.dtype == np.uint8
    assert (x[0] == [255, 0, 0]).all() and (x[1] == [0, 255, 0]).all()
    assert (x[2] == [0, 0, 255]).all()
    proc = run("ffhq128_npz", "--data_dir", d, "--out", tmp_path / "s.npz", "--image_size", 32,
               "--workers", 2)
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "s.npz")["arr_0"].shape == (3, 32, 32, 3)


def test_ffhq128_errors(tmp_path):
    d = tmp_path / "thumbs"
    d.mkdir()
    out = tmp_path / "f.npz"
    assert_clean_error(run("ffhq128_npz", "--data_dir", d, "--out", out), "no images")
    Image.new("RGB", (128, 128)).save(d / "a.png")
    (d / "b.png").write_bytes(b"\x89PNG broken")
    assert_clean_error(run("ffhq128_npz", "--data_dir", d, "--out", out), "b.png")
    assert_clean_error(run("ffhq128_npz", "--data_dir", d, "--out", out, "--workers", 2),
                       "b.png")
    assert_clean_error(run("ffhq128_npz", "--data_dir", tmp_path / "zz", "--out", out), "zz")
    assert sorted(os.listdir(tmp_path)) == ["thumbs"]


def _celeba_jpeg(path, inner=(220, 30, 30), outer=(30, 30, 220)):
    """178x218 JPEG: the centred 140x140 box in ``inner``, the rest ``outer``."""
    img = Image.new("RGB", (178, 218), outer)
    img.paste(Image.new("RGB", (140, 140), inner), (19, 39))
    img.save(path, quality=95)


def test_celeba64_crops(tmp_path):
    d = tmp_path / "img_align_celeba"
    d.mkdir()
    for i in range(1, 4):
        _celeba_jpeg(d / f"{i:06d}.jpg")
    proc = run("celeba64_npz", "--data_dir", d, "--out", tmp_path / "c.npz")
    assert proc.returncode == 0, proc.stderr
    x = np.load(tmp_path / "c.npz")["arr_0"].astype(int)
    assert x.shape == (3, 64, 64, 3)
    inner = x[:, 2:-2, 2:-2]  # away from the box edge (JPEG/resampling ringing)
    assert np.abs(inner - [220, 30, 30]).max() < 20  # red stays red: RGB order
    proc = run("celeba64_npz", "--data_dir", d, "--out", tmp_path / "n.npz", "--crop", "none")
    assert proc.returncode == 0, proc.stderr
    x = np.load(tmp_path / "n.npz")["arr_0"].astype(int)
    assert np.abs(x[:, 0, 32] - [30, 30, 220]).max() < 20  # top border is outside the box
    part = tmp_path / "list_eval_partition.txt"
    part.write_text("000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n")
    proc = run("celeba64_npz", "--data_dir", d, "--out", tmp_path / "t.npz",
               "--partition_file", part, "--split", "test")
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "t.npz")["arr_0"].shape == (1, 64, 64, 3)


def test_celeba64_errors(tmp_path):
    d = tmp_path / "img_align_celeba"
    d.mkdir()
    out = tmp_path / "c.npz"
    assert_clean_error(run("celeba64_npz", "--data_dir", d, "--out", out), "no images")
    Image.new("RGB", (100, 100)).save(d / "000001.jpg")
    assert_clean_error(run("celeba64_npz", "--data_dir", d, "--out", out), "140x140")
    assert_clean_error(run("celeba64_npz", "--data_dir", d, "--out", out, "--split", "train"),
                       "partition_file")
    assert sorted(os.listdir(tmp_path)) == ["img_align_celeba"]


# ------------------------------------------------------------------------------- LSUN


def _encode(img, fmt):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


@pytest.mark.skipif(lmdb is None, reason="the optional lmdb package is not installed")
def test_lsun_png_and_npz(tmp_path):
    db = tmp_path / "bedroom_train_lmdb"
    env = lmdb.open(str(db), map_size=1 << 24)
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    with env.begin(write=True) as txn:
        for i, (c, fmt) in enumerate(zip(colors, ["WEBP", "PNG", "WEBP"])):
            img = Image.new("RGB", (90, 60), c)
            img.paste(Image.new("RGB", (10, 60), (255, 255, 255)), (0, 0))  # off-centre strip
            txn.put(f"key{i:03d}".encode(), _encode(img, fmt))
    env.close()
    proc = run("lsun", "--lmdb_dir", db, "--out_dir", tmp_path / "png", "--out",
               tmp_path / "l.npz", "--image_size", 30)
    assert proc.returncode == 0, proc.stderr
    x = np.load(tmp_path / "l.npz")["arr_0"]
    assert x.shape == (3, 30, 30, 3)
    for i, c in enumerate(colors):  # centre crop of 45x30 drops the white strip
        assert (x[i] == c).all(), (i, x[i].reshape(-1, 3)[:3])
    names = sorted(os.listdir(tmp_path / "png"))
    assert names == ["bedroom_0000000.png", "bedroom_0000001.png", "bedroom_0000002.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "png" / names[1])), x[1])
    proc = run("lsun", "--lmdb_dir", db, "--out", tmp_path / "one.npz", "--limit", 1,
               "--image_size", 16)
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "one.npz")["arr_0"].shape == (1, 16, 16, 3)


@pytest.mark.skipif(lmdb is None, reason="the optional lmdb package is not installed")
def test_lsun_errors(tmp_path):
    db = tmp_path / "church_lmdb"
    env = lmdb.open(str(db), map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"a", _encode(Image.new("RGB", (40, 40)), "PNG"))
        txn.put(b"b", b"not an image")
    env.close()
    assert_clean_error(run("lsun", "--lmdb_dir", db, "--out", tmp_path / "x.npz",
                           "--out_dir", tmp_path / "png"), "decode")
    assert_clean_error(run("lsun", "--lmdb_dir", tmp_path / "nope", "--out", tmp_path / "x.npz"),
                       "nope")
    assert_clean_error(run("lsun", "--lmdb_dir", db), "nothing to do")
    assert sorted(os.listdir(tmp_path)) == ["church_lmdb"]


def test_lsun_without_lmdb_package(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "lmdb.py").write_text("raise ImportError('simulated: lmdb not installed')\n")
    proc = run("lsun", "--lmdb_dir", tmp_path, "--out", tmp_path / "x.npz",
               env={"PYTHONPATH": str(fake)})
    assert_clean_error(proc, "pip install lmdb")
    assert not (tmp_path / "x.npz").exists()
