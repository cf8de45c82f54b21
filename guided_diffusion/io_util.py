"""The one I/O layer: atomic writes, cloud paths, the streaming npz writer, seed derivation.

Every file this project writes goes through :func:`atomic_write` (or a helper built on it): the
data go to a temporary file in the destination folder, are flushed and fsynced, get the mode a
plain ``open(path, "w")`` would give (0666 minus the umask), and are renamed into place. So a file
that exists under its final name is complete, and a killed process leaves at most a ``.tmp-*``
file (never a partial output).

Cloud paths (``gs://``, ``az://``, ``http(s)://``: what ``blobfile`` reads) go through ``blobfile``
where upstream used it: checkpoints read, data folders, training checkpoints and logs written. An
atomic write to such a path is staged in a local temporary file, uploaded under a ``.tmp-*`` name
beside the destination, then copied to its final name and the temporary object removed (object
stores have no rename: the final object appears whole when its copy completes, never partly
written). ``GD_IO_BACKEND=blobfile`` sends local paths through the same blobfile code (how the
suite tests it without a bucket).
"""

import contextlib
import hashlib
import io
import os
import sys
import tempfile
import time
import uuid
import zipfile

import numpy as np

TMP_PREFIX = ".tmp-"


# ------------------------------------------------------------------ cloud paths (blobfile)
CLOUD_PREFIXES = ("gs://", "az://", "https://", "http://")
BACKEND_ENV = "GD_IO_BACKEND"  # "blobfile": local paths go through blobfile too (tests)


def is_cloud(path):
    """True for a path that only blobfile can open (``gs://``, ``az://``, ``http(s)://``)."""
    return str(path).startswith(CLOUD_PREFIXES)


def via_blobfile(path):
    """Whether ``path`` is read and written through blobfile: a cloud path, or any path under
    ``GD_IO_BACKEND=blobfile``."""
    return is_cloud(path) or os.environ.get(BACKEND_ENV, "") == "blobfile"


def blobfile_module(path=""):
    """``import blobfile``, or a one-line error saying what to install."""
    try:
        import blobfile
    except ImportError:
        raise ValueError(f"{path or 'a cloud path'}: cloud paths are read and written through blobfile, which is "
                         "not installed: pip install blobfile (or pip install -e .[cloud])") from None
    return blobfile


def exists(path):
    path = os.fspath(path)
    return blobfile_module(path).exists(path) if via_blobfile(path) else os.path.exists(path)


def isdir(path):
    path = os.fspath(path)
    return blobfile_module(path).isdir(path) if via_blobfile(path) else os.path.isdir(path)


def isfile(path):
    path = os.fspath(path)
    if via_blobfile(path):
        bf = blobfile_module(path)
        return bf.exists(path) and not bf.isdir(path)
    return os.path.isfile(path)


def join(path, *parts):
    path = os.fspath(path)
    return blobfile_module(path).join(path, *parts) if is_cloud(path) else os.path.join(path, *parts)


def makedirs(path):
    """``os.makedirs(path, exist_ok=True)``; on a bucket, whatever blobfile does (folders are implicit)."""
    path = os.fspath(path)
    if via_blobfile(path):
        blobfile_module(path).makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def walk(top):
    """``os.walk(top)`` (sorted), through blobfile for cloud paths: yields (folder, subfolders, files)."""
    top = os.fspath(top)
    if not via_blobfile(top):
        yield from os.walk(top)
        return
    bf = blobfile_module(top)
    for root, dirs, files in bf.walk(top):
        yield root.rstrip("/") if root != "/" else root, sorted(d.rstrip("/") for d in dirs), sorted(files)


@contextlib.contextmanager
def open_read(path, mode="rb"):
    """``open(path, mode)`` for reading ("rb" or "r"), through blobfile for cloud paths."""
    path = os.fspath(path)
    if mode not in ("rb", "r"):
        raise ValueError(f"open_read mode must be 'rb' or 'r', got {mode!r}")
    if via_blobfile(path):
        with blobfile_module(path).BlobFile(path, mode) as f:
            yield f
    else:
        with open(path, mode) as f:
            yield f


def read_bytes(path):
    """The bytes of ``path`` (local or cloud)."""
    with open_read(path, "rb") as f:
        return f.read()


@contextlib.contextmanager
def _atomic_write_blobfile(path, mode, suffix):
    """:func:`atomic_write` for blobfile paths: a local temporary file, uploaded as a ``.tmp-*``
    object beside ``path``, copied to ``path``, the temporary object removed."""
    bf = blobfile_module(path)
    fd, local = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix)
    staged = bf.join(bf.dirname(path), f"{TMP_PREFIX}{uuid.uuid4().hex}{suffix}")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        bf.copy(local, staged, overwrite=True)
        bf.copy(staged, path, overwrite=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(local)
        with contextlib.suppress(Exception):
            if bf.exists(staged):
                bf.remove(staged)


class CloudText:
    """A text file on a blobfile path that is appended to (logs): object stores cannot append, so
    the text is held in memory (starting from what the file already holds) and written whole, with
    :func:`atomic_write`, on :meth:`flush` at most every ``every`` seconds, and on :meth:`close`."""

    def __init__(self, path, every=30.0):
        self.path = os.fspath(path)
        self.every = float(every)
        self.text = read_bytes(self.path).decode("utf-8") if isfile(self.path) else ""
        self._saved = None
        self._last = 0.0

    def write(self, text):
        self.text += text

    def rewrite(self, text):
        self.text = text

    def flush(self, force=False):
        if self.text == self._saved or (not force and time.monotonic() - self._last < self.every):
            return
        with atomic_write(self.path, "w") as f:
            f.write(self.text)
        self._saved, self._last = self.text, time.monotonic()

    def close(self):
        self.flush(force=True)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path, mode="wb", *, suffix=None, fsync=True, tmp_dir=None):
    """Open a temporary file beside ``path``; on a clean exit, fsync it and rename it to ``path``.

    Yields the open file object (``mode`` "wb" or "w"). On an exception the temporary file is
    removed and ``path`` is left as it was. The final mode honours the umask, as for ``open``.

    :param suffix: the temporary file's suffix (default: ``path``'s extension, so libraries that
        look at the name, e.g. PIL or np.savez, see the right format).
    :param tmp_dir: folder for the temporary file (default: ``path``'s folder; it must be on the
        same file system for the rename to be atomic). A blobfile path (see the module docstring) is
        staged locally and uploaded under a temporary name first; ``tmp_dir`` does not apply.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    if suffix is None:
        suffix = os.path.splitext(path)[1]
    if via_blobfile(path):
        with _atomic_write_blobfile(path, mode, suffix) as f:
            yield f
        return
    folder = tmp_dir or os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_bytes_atomic(path, data):
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text_atomic(path, text):
    with atomic_write(path, "w") as f:
        f.write(text)


def save_npz_atomic(path, *arrays, **named):
    """``np.savez(path, *arrays, **named)``, atomically."""
    with atomic_write(path, "wb") as f:
        np.savez(f, *arrays, **named)


def save_png_atomic(path, image):
    """Save a PIL image (or an (H, W, 3) / (H, W) uint8 array) as PNG, atomically; creates the folder."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not via_blobfile(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb", suffix=".png") as f:
        image.save(f, format="PNG")


def save_figure_atomic(path, fig, **kwargs):
    """``fig.savefig`` (matplotlib) to ``path``, atomically; the format comes from the extension."""
    fmt = os.path.splitext(path)[1].lstrip(".") or "png"
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=fmt, **kwargs)


def torch_save_atomic(obj, path):
    """``torch.save(obj, path)``, atomically."""
    import torch

    with atomic_write(path, "wb", suffix=".pt") as f:
        torch.save(obj, f)


# ------------------------------------------------------------------ streaming npz
def npy_header(dtype, shape):
    """The ``.npy`` header bytes ``np.save`` writes for a C-order array of this dtype and shape."""
    buf = io.BytesIO()
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:  # header too long for format 1.0
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


def write_npz_streaming(fileobj, members):
    """Write an npz equal byte for byte to ``np.savez(file, **{name: array})`` from chunks.

    :param members: [(name, dtype, shape, chunks)] in order; ``chunks`` is an iterable of arrays
        whose C-order bytes, concatenated, are the array (only one chunk is held at a time).
    :raises ValueError: when the chunks do not add up to ``shape``.
    """
    with zipfile.ZipFile(fileobj, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, dtype, shape, chunks in members:
            expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            written = 0
            with zf.open(name + ".npy", "w", force_zip64=True) as fid:
                fid.write(npy_header(dtype, shape))
                for chunk in chunks:
                    data = np.ascontiguousarray(chunk, dtype=dtype)
                    fid.write(memoryview(data.reshape(-1).view(np.uint8)))
                    written += data.nbytes
            if written != expected:
                raise ValueError(f"{name}: wrote {written} bytes, expected {expected}")


# ------------------------------------------------------------------ seeds
def derive_seed(seed, *parts):
    """A well-mixed 63-bit seed that depends only on ``(seed, *parts)`` (SHA-256 of their text)."""
    text = "/".join(str(p) for p in (int(seed),) + tuple(parts))
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def npz_content_sha256(path):
    """SHA-256 of an npz's arrays: each member's name, dtype, shape and C-order bytes, in name order.

    Unlike :func:`sha256_file` it does not see the zip container (``np.savez`` stamps each member
    with the time it was written), so the same arrays written twice hash the same.
    """
    h = hashlib.sha256()
    with np.load(path, allow_pickle=False) as data:
        for name in sorted(data.files):
            arr = np.ascontiguousarray(data[name])
            h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
            h.update(memoryview(arr.reshape(-1).view(np.uint8)))
    return h.hexdigest()


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open_read(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
