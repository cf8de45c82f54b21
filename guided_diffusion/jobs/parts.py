"""Resumable sample output: part files, their meta, the work plan and streaming assembly.

Pure file handling, no processes: :mod:`guided_diffusion.jobs.sample` decides which rank calls what.

Layout, beside the final ``OUT.npz``::

    OUT.npz.parts/meta.json                          flags that affect the pixels (+ info)
    OUT.npz.parts/part_{start:08d}_{end:08d}.npz     samples start..end-1: "images" uint8 NHWC,
                                                     "labels" int64 (class-conditional models),
                                                     "sha256_images" / "sha256_labels": uint8[32]

Every file is written to a temporary name in the same folder, flushed to disk and renamed, so a
file that exists under its final name is complete; a killed process leaves at most a ``.tmp-*``
file, removed by the next run. Sample k depends only on (seed, k), so finished parts from any
batch size or process count can be reused, and the assembled npz is the same byte for byte.

Integrity. Each array of a part carries its checksum in the same file (``sha256_<name>``: SHA-256
of the dtype, the shape and the C-order bytes, see :func:`array_sha256`). A resumed run verifies
every part it reuses (:func:`verify_parts`): a truncated, bit-flipped or unreadable part is deleted
with a one-line warning naming it, and its samples are made again. Assembly checks each array
again as it streams it, so a corrupt part is never copied into ``OUT.npz``. Parts written before
checksums existed (no ``sha256_*`` member) are still accepted: they are checked for readability,
shape and dtype only.
"""

import errno
import hashlib
import json
import os
import re
import shutil

import numpy as np

from ..io_util import TMP_PREFIX, atomic_write, write_npz_streaming, write_text_atomic

META_NAME = "meta.json"
META_FORMAT = 1
PART_RE = re.compile(r"^part_(\d+)_(\d+)\.npz$")
CHECKSUM_PREFIX = "sha256_"


class PartsMismatchError(ValueError):
    """Finished parts on disk were made with flags that differ from this run's."""


class BadPartError(ValueError):
    """A part file is unreadable, has the wrong shape or dtype, or fails its checksum."""


class AssemblyError(OSError):
    """Writing the final npz failed (e.g. a full disk); the parts are kept, the temporary removed."""


def parts_dir_for(npz_path):
    return npz_path + ".parts"


def part_name(start, end):
    return f"part_{start:08d}_{end:08d}.npz"


# ------------------------------------------------------------------ parts
def array_sha256(arr):
    """uint8[32]: SHA-256 of an array's dtype, shape and C-order bytes."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{arr.dtype.str}{tuple(arr.shape)}".encode())
    h.update(memoryview(arr.reshape(-1).view(np.uint8)))
    return np.frombuffer(h.digest(), dtype=np.uint8).copy()


def read_part_array(path, key, expected_shape, dtype):
    """``key`` of the part file ``path``, checked: readable, shape, dtype and (if stored) checksum.

    :raises BadPartError: with the reason (the caller adds what to do).
    """
    try:
        with np.load(path) as z:
            arr = z[key]
            stored = z[CHECKSUM_PREFIX + key] if CHECKSUM_PREFIX + key in z.files else None
    except Exception as exc:  # truncated, bit-flipped (zip CRC) or foreign file
        raise BadPartError(f"{path}: unreadable part ({type(exc).__name__}: {exc})") from None
    if arr.shape != tuple(expected_shape) or arr.dtype != np.dtype(dtype):
        raise BadPartError(f"{path}: {key} has shape {arr.shape} {arr.dtype}, expected {tuple(expected_shape)} "
                           f"{np.dtype(dtype)}")
    if stored is not None and not np.array_equal(stored, array_sha256(arr)):
        raise BadPartError(f"{path}: {key} fails its SHA-256 checksum (the file is corrupt)")
    return arr


def verify_parts(parts_dir, parts, *, image_shape, with_labels):
    """Check every part (see :func:`read_part_array`); delete the bad ones.

    Returns (good parts, warning lines), one warning per deleted part, naming it.
    """
    good, warnings = [], []
    for start, end, name in parts:
        path = os.path.join(parts_dir, name)
        try:
            read_part_array(path, "images", (end - start,) + tuple(image_shape), np.uint8)
            if with_labels:
                read_part_array(path, "labels", (end - start,), np.int64)
        except BadPartError as exc:
            try:
                os.remove(path)
                done = "deleted; its samples are made again"
            except OSError as rm:
                done = f"could not delete it ({rm.strerror or rm}); delete it by hand"
            warnings.append(f"{exc}: {done}")
            continue
        good.append((start, end, name))
    return good, warnings


def write_part(parts_dir, start, images, labels=None, trace=None):
    """Write samples ``start .. start + len(images) - 1`` as one part file (atomically).

    ``trace``: optional (B, S) int32 per-sample time-shift trace (``--save_trace``).
    """
    arrays = {"images": np.ascontiguousarray(images, dtype=np.uint8)}
    if labels is not None:
        arrays["labels"] = np.ascontiguousarray(labels, dtype=np.int64)
    if trace is not None:
        arrays["trace"] = np.ascontiguousarray(trace, dtype=np.int32)
    for key in list(arrays):
        arrays[CHECKSUM_PREFIX + key] = array_sha256(arrays[key])
    path = os.path.join(parts_dir, part_name(start, start + len(images)))
    with atomic_write(path, "wb", suffix=".npz") as f:
        np.savez(f, **arrays)
    return path


def list_parts(parts_dir):
    """Sorted [(start, end, filename)] of the finished part files in ``parts_dir``."""
    out = []
    if not os.path.isdir(parts_dir):
        return out
    for name in os.listdir(parts_dir):
        m = PART_RE.match(name)
        if m and int(m.group(2)) > int(m.group(1)):
            out.append((int(m.group(1)), int(m.group(2)), name))
    return sorted(out)


def done_intervals(parts, num_samples):
    """Merged [start, end) intervals of sample indices < ``num_samples`` covered by ``parts``."""
    merged = []
    for start, end, _ in parts:
        start, end = start, min(end, num_samples)
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [tuple(iv) for iv in merged]


def plan_batches(done, num_samples, batch_size):
    """[(start, end)] batches of at most ``batch_size`` covering [0, num_samples) minus ``done``.

    Batches never cross a finished interval; with nothing done they are
    [0, b), [b, 2b), ..., the last one cut at ``num_samples``.
    """
    batches, cursor = [], 0
    for start, end in list(done) + [(num_samples, num_samples)]:
        for b in range(cursor, start, batch_size):
            batches.append((b, min(b + batch_size, start)))
        cursor = max(cursor, end)
    return batches


def remove_stale_temporaries(parts_dir):
    """Remove ``.tmp-*`` files left by killed processes (call while no process is writing)."""
    if os.path.isdir(parts_dir):
        for name in os.listdir(parts_dir):
            if name.startswith(TMP_PREFIX):
                try:
                    os.remove(os.path.join(parts_dir, name))
                except FileNotFoundError:
                    pass


# ------------------------------------------------------------------ meta
def _normalise(obj):
    return json.loads(json.dumps(obj, sort_keys=True))


def write_meta(parts_dir, meta):
    text = json.dumps(_normalise(meta), indent=1, sort_keys=True) + "\n"
    write_text_atomic(os.path.join(parts_dir, META_NAME), text)


def read_meta(parts_dir):
    """The meta dict, or None when missing or unreadable."""
    try:
        with open(os.path.join(parts_dir, META_NAME), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def flag_differences(old_flags, new_flags):
    """Sorted names whose values differ between two flag dicts (missing counts as different)."""
    old_flags, new_flags = _normalise(old_flags), _normalise(new_flags)
    return sorted(k for k in set(old_flags) | set(new_flags) if old_flags.get(k, "<missing>") != new_flags.get(k, "<missing>"))


def prepare_parts_dir(parts_dir, meta, *, overwrite, restart_flag="--overwrite True", image_shape=None,
                      with_labels=False):
    """Make ``parts_dir`` ready for this run and return its finished parts.

    ``meta`` = {"flags": {...}, "info": {...}}: "flags" are compared with the parts on disk,
    "info" only recorded. ``overwrite`` discards existing parts. A folder without finished
    parts is simply (re)started. With ``image_shape`` (H, W, C), the parts that are kept are
    verified (:func:`verify_parts`) and bad ones deleted. Returns (parts, warnings).

    :raises PartsMismatchError: finished parts exist and their flags differ, naming the flags.
    """
    warnings = []
    if overwrite and os.path.isdir(parts_dir):
        shutil.rmtree(parts_dir)
    os.makedirs(parts_dir, exist_ok=True)
    remove_stale_temporaries(parts_dir)
    parts = list_parts(parts_dir)
    new = {"format": META_FORMAT, **_normalise(meta)}
    if parts:
        old = read_meta(parts_dir)
        if old is None or old.get("format") != META_FORMAT:
            raise PartsMismatchError(
                f"{parts_dir} holds {len(parts)} finished part(s) but no readable {META_NAME}; "
                f"pass {restart_flag} to start over"
            )
        diff = flag_differences(old.get("flags", {}), new["flags"])
        if diff:
            shown = ", ".join(
                f"{k} (parts: {old.get('flags', {}).get(k, '<missing>')!r}, now: {new['flags'].get(k, '<missing>')!r})"
                for k in diff[:6]
            )
            more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
            raise PartsMismatchError(
                f"{parts_dir} holds finished samples made with different flags: {shown}{more}; "
                f"rerun with the same flags to resume, or pass {restart_flag} to start over"
            )
        old_info, new_info = old.get("info", {}), new.get("info", {})
        for key in ("device", "torch"):
            if old_info.get(key) != new_info.get(key):
                warnings.append(
                    f"parts were made with {key} {old_info.get(key)!r}, this run uses {new_info.get(key)!r}: "
                    "floating-point rounding may differ between the two"
                )
        new["info"] = old_info  # keep what the first parts were made with
        if image_shape is not None:
            parts, bad = verify_parts(parts_dir, parts, image_shape=image_shape, with_labels=with_labels)
            warnings += bad
    write_meta(parts_dir, new)
    return parts, warnings


# ------------------------------------------------------------------ assembly
def _part_arrays(parts_dir, parts, num_samples, key, shape_tail, dtype):
    """Yield each part's ``key`` array, cut to the indices not yet yielded and < num_samples."""
    cursor = 0
    for start, end, name in parts:
        if end <= cursor or start >= num_samples:
            continue
        if start > cursor:
            break  # a gap: reported by the caller's byte count check below
        path = os.path.join(parts_dir, name)
        try:
            arr = read_part_array(path, key, (end - start,) + tuple(shape_tail), dtype)
        except BadPartError as exc:
            raise BadPartError(f"{exc}; nothing was assembled: rerun the same command, it checks the parts "
                               "and makes bad ones again") from None
        stop = min(end, num_samples)
        yield arr[cursor - start : stop - start]
        cursor = stop
    if cursor < num_samples:
        raise ValueError(f"{parts_dir}: samples {cursor}.. are missing; rerun the same command to make them")


def read_trace(parts_dir, num_samples, num_steps):
    """(num_samples, num_steps) int32: the parts' "trace" arrays in index order."""
    parts = list_parts(parts_dir)
    return np.concatenate(list(_part_arrays(parts_dir, parts, num_samples, "trace", (num_steps,), np.int32)))


def assemble(parts_dir, out_path, *, num_samples, image_shape, with_labels, grid_size=0):
    """Stream the parts into ``out_path`` (arr_0 uint8 NHWC, arr_1 int64 labels), atomically.

    Holds one part at a time. Returns the first ``grid_size`` images (for a PNG grid).
    """
    parts = list_parts(parts_dir)
    grid = []

    def images():
        kept = 0
        for arr in _part_arrays(parts_dir, parts, num_samples, "images", image_shape, np.uint8):
            if kept < grid_size:
                grid.append(arr[: grid_size - kept].copy())
                kept += len(grid[-1])
            yield arr

    members = [("arr_0", np.uint8, (num_samples,) + tuple(image_shape), images())]
    if with_labels:
        labels = _part_arrays(parts_dir, parts, num_samples, "labels", (), np.int64)
        members.append(("arr_1", np.int64, (num_samples,), labels))
    # The temporary lives in the parts folder (same file system), so a kill leaves nothing beside OUT.
    # atomic_write removes it on any error; the parts are only read here.
    try:
        with atomic_write(out_path, "wb", suffix=".npz", tmp_dir=parts_dir) as f:
            write_npz_streaming(f, members)
    except OSError as exc:
        reason = exc.strerror or str(exc) or errno.errorcode.get(exc.errno, "error")
        raise AssemblyError(
            f"writing {out_path} failed ({reason}): its temporary file is removed and the {len(parts)} "
            f"part(s) in {parts_dir} are kept; fix the cause (e.g. free disk space) and rerun the same command "
            "to assemble them",
        ) from None
    return np.concatenate(grid) if grid else None


def remove_parts(parts_dir):
    shutil.rmtree(parts_dir, ignore_errors=True)
