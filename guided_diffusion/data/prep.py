"""
Helpers shared by the dataset preparation scripts in ``datasets/``.

* ``PrepError`` + ``run_main``: user-facing failures end as one ``error: ...`` line on stderr
  and exit status 1 (no traceback); set ``PREP_DEBUG=1`` to get tracebacks.
* ``Outputs``: all outputs of a script are written under temporary names next to their
  targets and renamed into place only when everything succeeded (``commit``); on failure
  they are removed, so a failed run leaves no partial output.
* ``write_npz``: writes an .npz (uncompressed, like ``np.savez``) array by array, streaming
  chunks, so an output larger than memory's spare room can be written.
* Image helpers (``center_crop_arr``, ``lsun_resize_crop``, ``open_image``) and a restricted
  pickle loader for the CIFAR / downsampled-ImageNet batch files.

These scripts do not need torch.
"""

import argparse
import os
import pickle
import shutil
import sys

import numpy as np
from PIL import Image

from .resize import center_crop_arr, crop_center  # noqa: F401 (re-exported for the data-set scripts)
from ..io_util import write_npz_streaming

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif", "webp", "bmp")


class PrepError(Exception):
    """A problem with the inputs or arguments, reported as one line without a traceback."""


def run_main(main, argv=None):
    """Run ``main(argv)``; turn any failure into one stderr line and a non-zero exit."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "prep"
    try:
        main(argv)
    except PrepError as exc:
        if os.environ.get("PREP_DEBUG"):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output written", file=sys.stderr)
        sys.exit(130)
    except MemoryError:
        print(f"{prog}: error: out of memory; try --limit or a machine with more RAM",
              file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # unexpected: still one line, with a hint for a traceback
        if os.environ.get("PREP_DEBUG"):
            raise
        msg = str(exc).replace("\n", " ")
        print(f"{prog}: error: {type(exc).__name__}: {msg} "
              f"(set PREP_DEBUG=1 for a traceback)", file=sys.stderr)
        sys.exit(1)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks; appends real defaults to option help."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" not in text and action.default not in (None, False)
                and action.default is not argparse.SUPPRESS and action.option_strings):
            text += " (default: %(default)s)"
        return text


def make_parser(description):
    return argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)


def add_overwrite_arg(parser):
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace existing outputs (by default an existing output is an error)",
    )


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def require_dir(path, what, hint=""):
    if not os.path.exists(path):
        raise PrepError(f"{what} {path!r} does not exist{'; ' + hint if hint else ''}")
    if not os.path.isdir(path):
        raise PrepError(f"{what} {path!r} is not a directory{'; ' + hint if hint else ''}")


def require_file(path, what, hint=""):
    if not os.path.isfile(path):
        state = "is not a file" if os.path.exists(path) else "does not exist"
        raise PrepError(f"{what} {path!r} {state}{'; ' + hint if hint else ''}")


# ----------------------------------------------------------------------------------------
# Atomic outputs


def precheck_outputs(overwrite, files=(), dirs=()):
    """Cheap checks of output paths before any slow work (suffix, already existing)."""
    for path in files:
        if path is None:
            continue
        if not path.lower().endswith(".npz"):
            raise PrepError(f"output file {path!r} must end with .npz")
        if os.path.lexists(path) and not overwrite:
            raise PrepError(f"output {path!r} already exists; remove it or pass --overwrite")
        if os.path.isdir(path):
            raise PrepError(f"output {path!r} is a directory; expected a file path")
    for path in dirs:
        if path is None:
            continue
        if os.path.lexists(path) and not overwrite:
            raise PrepError(f"output {path!r} already exists; remove it or pass --overwrite")
        if os.path.lexists(path) and not os.path.isdir(path):
            raise PrepError(f"output {path!r} exists and is not a directory")


class Outputs:
    """
    Transaction over output files and folders::

        with Outputs(overwrite=args.overwrite) as out:
            tmp = out.file("x.npz")      # write to tmp
            tmpdir = out.dir("pngs")     # write into tmpdir
        # on normal exit: renamed into place; on an exception: temporaries removed.
    """

    def __init__(self, overwrite=False):
        self.overwrite = overwrite
        self._items = []  # (kind, tmp, final)
        self._made_dirs = []

    def _prepare(self, final, kind):
        final = os.path.abspath(final)
        if any(f == final for _, _, f in self._items):
            raise PrepError(f"output {final!r} is named twice")
        if os.path.lexists(final):
            if not self.overwrite:
                raise PrepError(f"output {final!r} already exists; remove it or pass --overwrite")
            if kind == "file" and os.path.isdir(final):
                raise PrepError(f"output {final!r} is a directory; expected a file path")
            if kind == "dir" and not os.path.isdir(final):
                raise PrepError(f"output {final!r} exists and is not a directory")
        parent = os.path.dirname(final)
        missing = []
        p = parent
        while p and not os.path.isdir(p):
            if os.path.exists(p):
                raise PrepError(f"cannot create output folder {parent!r}: {p!r} is a file")
            missing.append(p)
            p = os.path.dirname(p)
        for d in reversed(missing):
            os.mkdir(d)
            self._made_dirs.append(d)
        base = os.path.basename(final)
        tmp = os.path.join(parent, f".{base}.tmp-{os.getpid()}")
        return final, tmp

    def file(self, final, suffix=None):
        if suffix and not final.lower().endswith(suffix):
            raise PrepError(f"output file {final!r} must end with {suffix}")
        final, tmp = self._prepare(final, "file")
        if suffix:
            tmp += suffix
        self._items.append(("file", tmp, final))
        return tmp

    def dir(self, final):
        final, tmp = self._prepare(final, "dir")
        if os.path.lexists(tmp):
            shutil.rmtree(tmp)
        os.mkdir(tmp)
        self._items.append(("dir", tmp, final))
        return tmp

    def commit(self):
        for kind, tmp, final in self._items:
            if not os.path.lexists(tmp):
                raise PrepError(f"internal: output {final!r} was never written")
        for kind, tmp, final in self._items:
            if kind == "file":
                os.replace(tmp, final)
            else:
                old = None
                if os.path.lexists(final):
                    old = final + f".old-{os.getpid()}"
                    os.rename(final, old)
                os.rename(tmp, final)
                if old:
                    shutil.rmtree(old, ignore_errors=True)
        self._items = []

    def abort(self):
        for kind, tmp, _ in self._items:
            try:
                if kind == "dir":
                    shutil.rmtree(tmp, ignore_errors=True)
                elif os.path.lexists(tmp):
                    os.remove(tmp)
            except OSError:
                pass
        self._items = []
        for d in reversed(self._made_dirs):
            try:
                os.rmdir(d)
            except OSError:
                pass
        self._made_dirs = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
        return False


# ----------------------------------------------------------------------------------------
# npz writing


def write_npz(path, entries):
    """
    Write an uncompressed .npz (readable by ``np.load``) at ``path``.

    ``entries``: list of ``(name, array)`` or ``(name, shape, dtype, chunks)`` where
    ``chunks`` is an iterable of arrays whose first axes add up to ``shape[0]`` (each chunk
    has shape (k,) + shape[1:]). Chunks are consumed one at a time.
    """
    members = []
    for entry in entries:
        if len(entry) == 2:
            name, arr = entry
            arr = np.ascontiguousarray(arr)
            members.append((name, arr.dtype, arr.shape, [arr]))
        else:
            name, shape, dtype, chunks = entry
            members.append((name, np.dtype(dtype), tuple(shape), _checked_chunks(name, tuple(shape), chunks)))
    with open(path, "wb") as fh:
        try:
            write_npz_streaming(fh, members)
        except ValueError as exc:
            raise PrepError(f"internal: {exc}") from None
        fh.flush()
        os.fsync(fh.fileno())


def _checked_chunks(name, shape, chunks):
    for chunk in chunks:
        if np.shape(chunk)[1:] != shape[1:]:
            raise PrepError(f"internal: chunk shape {np.shape(chunk)} does not fit {shape} of {name}")
        yield chunk


# ----------------------------------------------------------------------------------------
# Images


def lsun_resize_crop(pil_image, image_size):
    """Resize the shorter side to image_size with BOX, then crop the centre (LSUN rule)."""
    scale = image_size / min(pil_image.size)
    new_size = tuple(max(image_size, round(s * scale)) for s in pil_image.size)
    if new_size != pil_image.size:
        pil_image = pil_image.resize(new_size, resample=Image.BOX)
    return crop_center(np.asarray(pil_image), image_size)


def open_image(source, mode="RGB", name=None):
    """Decode an image file path or bytes into a loaded PIL image in ``mode``."""
    import io
    label = name or (source if isinstance(source, str) else "image bytes")
    try:
        fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
        with Image.open(fp) as img:
            img.load()
            return img.convert(mode)
    except FileNotFoundError:
        raise PrepError(f"image {label!r} does not exist")
    except Exception as exc:
        raise PrepError(f"cannot decode image {label!r}: {type(exc).__name__}: {exc}")


def list_images(folder, extensions=IMAGE_EXTENSIONS):
    """Sorted list of image files (by extension) under ``folder``, recursive."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            if "." in name and name.rsplit(".", 1)[1].lower() in extensions:
                out.append(os.path.join(root, name))
    return sorted(out)


def save_png(arr, path):
    """Save uint8 (H, W) grey or (H, W, 3) RGB as PNG."""
    Image.fromarray(np.ascontiguousarray(arr)).save(path, format="PNG")


def parallel_map(fn, items, workers):
    """Ordered map; uses a process pool when workers > 1."""
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    import multiprocessing as mp
    with mp.get_context("spawn" if sys.platform == "darwin" else "fork").Pool(workers) as pool:
        yield from pool.imap(fn, items, chunksize=64)


# ----------------------------------------------------------------------------------------
# Pickle batches (CIFAR-10, downsampled ImageNet)

_NUMPY_CORE = "numpy._core" if hasattr(np, "_core") else "numpy.core"
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("__builtin__", "object"),
    ("builtins", "object"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays and plain Python containers."""

    def find_class(self, module, name):
        norm = module.replace("numpy._core", "numpy.core")
        if (norm, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} (only numpy arrays and plain data allowed)"
            )
        if norm.startswith("numpy.core"):
            module = norm.replace("numpy.core", _NUMPY_CORE, 1)
        return super().find_class(module, name)


def load_pickle_batch(path, what="pickle batch file"):
    """Load a CIFAR-style pickle batch; returns a dict with str keys."""
    require_file(path, what)
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except Exception as exc:
        raise PrepError(f"{path!r} is not a valid {what} ({type(exc).__name__}: {exc})")
    if not isinstance(obj, dict):
        raise PrepError(f"{path!r} is not a valid {what} "
                        f"(expected a dict, got {type(obj).__name__})")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def planes_to_nhwc(data, path, side=None):
    """(N, 3*S*S) uint8 rows of R, G, B planes -> (N, S, S, 3) RGB."""
    data = np.asarray(data)
    if data.ndim != 2 or data.dtype != np.uint8:
        raise PrepError(f"{path!r}: 'data' must be a uint8 (N, 3*S*S) array, "
                        f"got {data.dtype} {data.shape}")
    d = data.shape[1]
    s = side or int(round((d / 3) ** 0.5))
    if 3 * s * s != d:
        raise PrepError(f"{path!r}: 'data' rows have {d} values, not 3*S*S for a square image")
    return data.reshape(-1, 3, s, s).transpose(0, 2, 3, 1)


# ----------------------------------------------------------------------------------------
# Folder of images -> npz


def images_entry(name, items, load_fn, image_size, channels=3, workers=1, on_image=None,
                 count=None):
    """
    An npz entry ``(name, shape, dtype, chunks)`` of ``load_fn(item)`` -> uint8
    (image_size, image_size, channels) arrays, computed lazily (``workers`` processes).
    ``on_image(i, arr)`` is called for each image (e.g. to also write a PNG).
    ``count``: number of items when ``items`` is a lazy iterable without len().
    """
    shape = (len(items) if count is None else count, image_size, image_size, channels)

    def chunks():
        for i, arr in enumerate(parallel_map(load_fn, items, workers)):
            if arr.ndim == 2:
                arr = arr[..., None]
            if arr.shape != shape[1:]:
                raise PrepError(f"internal: image {i} has shape {arr.shape}, expected {shape[1:]}")
            if on_image is not None:
                on_image(i, arr)
            if shape[0] >= 20000 and (i + 1) % (shape[0] // 10) == 0:
                print(f"  {i + 1}/{shape[0]} images", file=sys.stderr, flush=True)
            yield arr[None]

    return (name, shape, np.uint8, chunks())
