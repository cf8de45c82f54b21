"""Tests for guided_diffusion.image_datasets (load_data, ImageDataset, StepBatcher)."""

import ast
import os

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion import image_datasets as imd
from guided_diffusion.image_datasets import (
    ImageDataset, StepBatcher, batch_indices, center_crop_arr, load_data,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _save(path, color, size=(16, 16), mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def folder(tmp_path):
    """6 images, classes cat/dog/emu from name prefixes, nested, mixed formats."""
    root = tmp_path / "imgs"
    _save(str(root / "dog_0.png"), (255, 0, 0))
    _save(str(root / "cat_1.png"), (0, 255, 0))
    _save(str(root / "sub" / "emu_2.PNG"), (0, 0, 255))
    _save(str(root / "sub" / "deeper" / "cat_3.gif"), (255, 255, 255))
    _save(str(root / "dog_4.jpeg"), (0, 0, 0), size=(40, 24))
    _save(str(root / "dog_5.jpg"), (0, 0, 0))
    (root / "notes.txt").write_text("not an image")
    return str(root)


# ------------------------------------------------------------------------------- folders


def test_folder_classes_sorted_prefixes(folder):
    ds = ImageDataset(folder, 8, class_cond=True)
    assert len(ds) == 6
    assert ds.class_names == ["cat", "dog", "emu"]
    labels = {os.path.basename(p): int(ds[i][1]["y"]) for i, p in enumerate(ds._paths)}
    assert labels == {"dog_0.png": 1, "cat_1.png": 0, "emu_2.PNG": 2, "cat_3.gif": 0,
                      "dog_4.jpeg": 1, "dog_5.jpg": 1}


def test_folder_rgb_order_and_range(folder):
    ds = ImageDataset(folder, 8)
    idx = [os.path.basename(p) for p in ds._paths].index("dog_0.png")
    x, cond = ds[idx]
    assert cond == {}
    assert x.shape == (3, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 1.0)
    np.testing.assert_allclose(x[1:], -1.0)
    xb, _ = ds.get_batch(range(len(ds)))
    assert xb.shape == (6, 3, 8, 8) and xb.dtype == torch.float32
    assert xb.min() >= -1 and xb.max() <= 1


def test_folder_grey_mode(folder):
    ds = ImageDataset(folder, 8, image_channels=1)
    idx = [os.path.basename(p) for p in ds._paths].index("cat_1.png")
    x, _ = ds[idx]
    assert x.shape == (1, 8, 8)
    grey = np.asarray(Image.new("RGB", (1, 1), (0, 255, 0)).convert("L"))[0, 0]
    np.testing.assert_allclose(x, grey / 127.5 - 1, atol=1e-6)


def test_center_crop_rule_matches_upstream_description():
    rng = np.random.RandomState(0)
    img = Image.fromarray(rng.randint(0, 256, (70, 150, 3), dtype=np.uint8))
    out = center_crop_arr(img, 16)
    # 70 >= 32 -> BOX halve to 75x35; 35 >= 32 -> halve to 37x17; then bicubic 17 -> 16.
    ref = img.resize((75, 35), Image.BOX).resize((37, 17), Image.BOX)
    ref = np.asarray(ref.resize((round(37 * 16 / 17), 16), Image.BICUBIC))
    left = (ref.shape[1] - 16) // 2
    np.testing.assert_array_equal(out, ref[:, left:left + 16])
    assert out.shape == (16, 16, 3)


def test_center_crop_same_as_prep_scripts():
    import guided_diffusion.data.prep as _common
    rng = np.random.RandomState(1)
    for shape in [(70, 150, 3), (33, 33), (200, 64, 3), (16, 16, 3)]:
        img = Image.fromarray(rng.randint(0, 256, shape, dtype=np.uint8))
        np.testing.assert_array_equal(center_crop_arr(img, 16), _common.center_crop_arr(img, 16))


def test_non_square_image_cropped(folder):
    ds = ImageDataset(folder, 8)
    idx = [os.path.basename(p) for p in ds._paths].index("dog_4.jpeg")
    x, _ = ds[idx]
    assert x.shape == (3, 8, 8)


# ------------------------------------------------------------------------------- npz


def _npz(path, arr, labels=None):
    if labels is None:
        np.savez(path, arr)
    else:
        np.savez(path, arr, labels)
    return str(path)


def test_npz_rgb_and_labels(tmp_path):
    rng = np.random.RandomState(0)
    arr = rng.randint(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(10) % 3
    path = _npz(tmp_path / "d.npz", arr, labels)
    ds = ImageDataset(path, 8, class_cond=True)
    x, cond = ds[4]
    np.testing.assert_allclose(x, arr[4].transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)
    assert cond["y"] == 1
    xb, cb = ds.get_batch([4, 0])
    np.testing.assert_allclose(xb[0].numpy(), x)
    assert cb["y"].dtype == torch.int64 and cb["y"].tolist() == [1, 0]


@pytest.mark.parametrize("shape", [(5, 8, 8), (5, 8, 8, 1)])
def test_npz_grey_to_grey_and_rgb(tmp_path, shape):
    arr = np.random.RandomState(0).randint(0, 256, shape, dtype=np.uint8)
    path = _npz(tmp_path / "g.npz", arr)
    x1, _ = ImageDataset(path, 8, image_channels=1)[2]
    assert x1.shape == (1, 8, 8)
    np.testing.assert_allclose(x1[0], arr[2].reshape(8, 8) / 127.5 - 1, atol=1e-6)
    x3, _ = ImageDataset(path, 8, image_channels=3)[2]
    assert x3.shape == (3, 8, 8)
    for c in range(3):
        np.testing.assert_allclose(x3[c], x1[0])


def test_npz_rgb_to_grey_and_resize(tmp_path):
    arr = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    arr[..., 0] = 255
    path = _npz(tmp_path / "r.npz", arr)
    x, _ = ImageDataset(path, 8, image_channels=1)[0]
    grey = np.asarray(Image.new("RGB", (1, 1), (255, 0, 0)).convert("L"))[0, 0]
    assert x.shape == (1, 8, 8)
    np.testing.assert_allclose(x, grey / 127.5 - 1, atol=1e-6)
    x3, _ = ImageDataset(path, 8)[1]
    assert x3.shape == (3, 8, 8)
    np.testing.assert_allclose(x3[0], 1.0)


def test_errors(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageDataset(str(tmp_path / "nope"), 8)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no images"):
        ImageDataset(str(empty), 8)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="bad.npz"):
        ImageDataset(str(bad), 8)
    np.savez(tmp_path / "nokey.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="arr_0"):
        ImageDataset(str(tmp_path / "nokey.npz"), 8)
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(_npz(tmp_path / "f.npz", np.zeros((2, 8, 8, 3), np.float32)), 8)
    with pytest.raises(ValueError, match="shape"):
        ImageDataset(_npz(tmp_path / "s.npz", np.zeros((2, 8, 8, 4), np.uint8)), 8)
    with pytest.raises(ValueError, match="arr_1"):
        ImageDataset(_npz(tmp_path / "l.npz", np.zeros((2, 8, 8, 3), np.uint8)), 8,
                     class_cond=True)
    with pytest.raises(ValueError, match="arr_1"):
        ImageDataset(_npz(tmp_path / "l2.npz", np.zeros((2, 8, 8, 3), np.uint8),
                          np.zeros(3, np.int64)), 8)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="neither"):
        ImageDataset(str(tmp_path / "x.txt"), 8)
    _save(os.path.join(folder, "noprefix.png"), (1, 2, 3))
    with pytest.raises(ValueError, match="noprefix.png"):
        ImageDataset(folder, 8, class_cond=True)
    with pytest.raises(ValueError, match="image_channels"):
        ImageDataset(folder, 8, image_channels=2)


# ------------------------------------------------------------------------------- batching


@pytest.fixture
def npz_ds(tmp_path):
    n = 24
    arr = np.zeros((n, 4, 4, 3), dtype=np.uint8)
    arr[:, :, :, 0] = np.arange(n)[:, None, None]  # the red value encodes the index
    arr[:, :, 0, 1] = 255  # a marker in the left column to see flips
    path = _npz(tmp_path / "b.npz", arr, np.arange(n) % 5)
    return ImageDataset(path, 4, class_cond=True)


def _ids(x):
    return ((x[:, 0, 0, :].max(dim=1).values + 1) * 127.5).round().long().tolist()


def _flipped(x):
    return (x[:, 1, 0, -1] > 0).tolist()  # marker moved from column 0 to the last column


def test_stepbatcher_same_seed_step_same_batch(npz_ds):
    a = StepBatcher(npz_ds, 5, seed=3)
    b = StepBatcher(npz_ds, 5, seed=3)
    for step in [7, 0, 3, 100, 3]:
        xa, ca = a.batch(step)
        xb, cb = b.batch(step)
        assert torch.equal(xa, xb) and torch.equal(ca["y"], cb["y"])
    c = StepBatcher(npz_ds, 5, seed=4)
    assert any(not torch.equal(a.batch(s)[0], c.batch(s)[0]) for s in range(4))


def test_resume_equals_continuous(npz_ds):
    cont = StepBatcher(npz_ds, 5, seed=11).iterate(0)
    batches = [next(cont) for _ in range(12)]
    resumed = StepBatcher(npz_ds, 5, seed=11).iterate(7)
    for k in range(7, 12):
        x, c = next(resumed)
        assert torch.equal(x, batches[k][0]) and torch.equal(c["y"], batches[k][1]["y"])


def test_epochs_are_permutations_and_labels_follow(npz_ds):
    b = StepBatcher(npz_ds, 8, seed=0, random_flip=False)  # 3 steps per epoch
    seen = []
    for step in range(6):
        x, c = b.batch(step)
        ids = _ids(x)
        assert c["y"].tolist() == [i % 5 for i in ids]
        assert torch.equal(torch.tensor(ids), b.indices(step))
        seen.append(ids)
    e0 = sum(seen[:3], [])
    e1 = sum(seen[3:], [])
    assert sorted(e0) == list(range(24)) and sorted(e1) == list(range(24))
    assert e0 != e1 and e0 != list(range(24))


def test_batch_straddles_epochs_without_dropping(npz_ds):
    b = StepBatcher(npz_ds, 7, seed=5, random_flip=False)
    stream = sum((b.indices(s).tolist() for s in range(24)), [])  # 168 = 7 epochs of 24
    for e in range(7):
        assert sorted(stream[24 * e:24 * (e + 1)]) == list(range(24))
    big = StepBatcher(npz_ds, 50, seed=5, random_flip=False)  # batch > dataset
    assert len(big.indices(3)) == 50


def test_shards_disjoint_cover_all_and_match_single_process(npz_ds):
    single = StepBatcher(npz_ds, 12, seed=9)
    ranks = [StepBatcher(npz_ds, 4, seed=9, shard=r, num_shards=3) for r in range(3)]
    for step in range(4):
        parts = [r.batch(step) for r in ranks]
        ids = [_ids(x) for x, _ in parts]
        assert sum(ids, []) == _ids(single.batch(step)[0])
        assert len(set(sum(ids, []))) == 12
        x_all = torch.cat([x for x, _ in parts])
        assert torch.equal(x_all, single.batch(step)[0])
    epoch = sum((r.indices(s).tolist() for s in range(2) for r in ranks), [])
    assert sorted(epoch) == list(range(24))


def test_load_data_sharding_disjoint_cover_all(npz_ds):
    seen = []
    for r in range(2):
        it = load_data(data_dir=npz_ds.source, batch_size=3, image_size=4, shard=r,
                       num_shards=2, seed=1, random_flip=False)
        for _ in range(4):  # 4 steps * 6 global = one epoch of 24
            seen.append(_ids(next(it)[0]))
    flat = sum(seen, [])
    assert sorted(flat) == list(range(24))


def test_batch_indices_function_matches(npz_ds):
    b = StepBatcher(npz_ds, 5, seed=2, shard=1, num_shards=2)
    for s in range(6):
        assert torch.equal(b.indices(s), batch_indices(24, 5, s, 2, shard=1, num_shards=2))


def test_flips(npz_ds):
    b = StepBatcher(npz_ds, 8, seed=0)
    nb = StepBatcher(npz_ds, 8, seed=0, random_flip=False)
    any_flip = any_plain = False
    for s in range(4):
        x, _ = b.batch(s)
        x0, _ = nb.batch(s)
        assert _ids(x) == _ids(x0)
        flips = b.flips(s).tolist()
        assert _flipped(x) == flips and not any(_flipped(x0))
        for i, f in enumerate(flips):
            assert torch.equal(x[i], x0[i].flip(-1) if f else x0[i])
        any_flip |= any(flips)
        any_plain |= not all(flips)
    assert any_flip and any_plain


def test_load_data_deterministic_file_order_and_cond(npz_ds, folder):
    it = load_data(data_dir=npz_ds.source, batch_size=10, image_size=4, class_cond=True,
                   deterministic=True, random_flip=False)
    x, c = next(it)
    assert x.shape == (10, 3, 4, 4) and x.dtype == torch.float32
    assert _ids(x) == list(range(10)) and c["y"].tolist() == [i % 5 for i in range(10)]
    assert _ids(next(it)[0]) == list(range(10, 20))
    assert _ids(next(it)[0]) == [20, 21, 22, 23, 0, 1, 2, 3, 4, 5]
    x, c = next(load_data(data_dir=folder, batch_size=4, image_size=8, image_channels=1))
    assert x.shape == (4, 1, 8, 8) and c == {}
    a = load_data(data_dir=folder, batch_size=4, image_size=8, class_cond=True, seed=3)
    b = load_data(data_dir=folder, batch_size=4, image_size=8, class_cond=True, seed=3)
    for _ in range(3):
        (xa, ca), (xb, cb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ca["y"], cb["y"])


def test_argument_errors(npz_ds):
    with pytest.raises(ValueError, match="shard"):
        StepBatcher(npz_ds, 4, seed=0, shard=2, num_shards=2)
    with pytest.raises(ValueError, match="batch_size"):
        StepBatcher(npz_ds, 0, seed=0)
    with pytest.raises(ValueError, match="step"):
        StepBatcher(npz_ds, 4, seed=0).batch(-1)


def test_no_distributed_imports():
    tree = ast.parse(open(imd.__file__).read())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    assert not [n for n in names if n.startswith("mpi4py") or n.startswith("torch.distributed")]
