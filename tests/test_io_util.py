"""guided_diffusion.io_util: atomic writes (umask-honouring modes, nothing partial), streaming npz, seeds, CLI runner."""

import io
import os

import numpy as np
import pytest

from guided_diffusion import cli, io_util


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_outputs_get_the_mode_of_a_plain_open(tmp_path, umask_022):
    from PIL import Image

    paths = {
        "npz": tmp_path / "a.npz", "png": tmp_path / "a.png", "json": tmp_path / "a.json", "pt": tmp_path / "a.pt",
    }
    io_util.save_npz_atomic(paths["npz"], np.zeros(3))
    io_util.save_png_atomic(paths["png"], Image.new("RGB", (4, 4)))
    io_util.write_text_atomic(paths["json"], "{}")
    io_util.torch_save_atomic({"w": 1}, paths["pt"])
    with open(tmp_path / "plain", "w") as f:
        f.write("x")
    plain = os.stat(tmp_path / "plain").st_mode & 0o777
    assert plain == 0o644
    for p in paths.values():
        assert os.stat(p).st_mode & 0o777 == plain, p
    assert sorted(os.listdir(tmp_path)) == sorted([p.name for p in paths.values()] + ["plain"])


def test_evaluator_stats_and_png_grid_modes(tmp_path, umask_022):
    from guided_diffusion.jobs.figures import save_comparison_png, save_grid_png

    imgs = np.zeros((4, 8, 8, 3), np.uint8)
    save_grid_png(tmp_path / "g.png", imgs)
    save_comparison_png(tmp_path / "c.png", imgs, imgs, ("a", "b"))
    for name in ("g.png", "c.png"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.npz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with io_util.atomic_write(target) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.npz"]


def test_streaming_npz_equals_np_savez():
    a = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3)
    b = np.arange(5, dtype=np.int64)
    buf, ref = io.BytesIO(), io.BytesIO()
    io_util.write_npz_streaming(buf, [("arr_0", np.uint8, a.shape, [a[:2], a[2:]]), ("arr_1", np.int64, (5,), [b])])
    np.savez(ref, a, b)
    assert buf.getvalue() == ref.getvalue()
    with pytest.raises(ValueError, match="expected"):
        io_util.write_npz_streaming(io.BytesIO(), [("arr_0", np.uint8, (6, 2, 3), [a])])


def test_derive_seed_is_stable_and_mixed():
    assert io_util.derive_seed(0, "noise", 3) == io_util.derive_seed(0, "noise", 3)
    values = {io_util.derive_seed(s, "x", k) for s in range(3) for k in range(5)}
    assert len(values) == 15 and all(0 <= v < 2**63 for v in values)
    # the value the training and data order code have always used (kept for exact resume of old runs)
    assert io_util.derive_seed(1, "dropout", 5, 0) == int.from_bytes(
        __import__("hashlib").sha256(b"1/dropout/5/0").digest()[:8], "little") & ((1 << 63) - 1)


def test_run_cli_one_line(capsys):
    def main(argv):
        raise ValueError("--flag is bad\nsecond line")

    with pytest.raises(SystemExit) as exc:
        cli.run_cli(main, [])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--flag is bad second line" in err


def test_npz_content_sha256_sees_arrays_not_the_zip(tmp_path):
    import zipfile

    from guided_diffusion.io_util import npz_content_sha256, sha256_file

    arrays = {"mu": np.arange(4, dtype=np.float64), "pool_3": np.ones((2, 3), np.float32)}
    np.savez(tmp_path / "a.npz", **arrays)
    # the same arrays in a zip whose members carry another timestamp (as a file made again later would)
    with zipfile.ZipFile(tmp_path / "b.npz", "w") as zf:
        for name in ("pool_3", "mu"):
            buf = io.BytesIO()
            np.save(buf, arrays[name])
            zf.writestr(zipfile.ZipInfo(name + ".npy", date_time=(1999, 1, 2, 3, 4, 6)), buf.getvalue())
    assert sha256_file(tmp_path / "a.npz") != sha256_file(tmp_path / "b.npz")
    assert npz_content_sha256(tmp_path / "a.npz") == npz_content_sha256(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", mu=arrays["mu"], pool_3=arrays["pool_3"] * 2)
    assert npz_content_sha256(tmp_path / "c.npz") != npz_content_sha256(tmp_path / "a.npz")
    np.savez(tmp_path / "d.npz", mu=arrays["mu"].astype(np.float32), pool_3=arrays["pool_3"])
    assert npz_content_sha256(tmp_path / "d.npz") != npz_content_sha256(tmp_path / "a.npz")
