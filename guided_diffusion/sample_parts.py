"""Resumable sample output: part files, their meta, the work plan and streaming assembly.

Pure file handling, no processes: :mod:`guided_diffusion.sample_run` decides which rank calls what.

Layout, beside the final ``OUT.npz``::

    OUT.npz.parts/meta.json                          flags that affect the pixels (+ info)
    OUT.npz.parts/part_{start:08d}_{end:08d}.npz     samples start..end-1: "images" uint8 NHWC,
                                                     "labels" int64 (class-conditional models)

Every file is written to a temporary name in the same folder, flushed to disk and renamed, so a
file that exists under its final name is complete; a killed process leaves at most a ``.tmp-*``
file, removed by the next run. Sample k depends only on (seed, k), so finished parts from any
batch size or process count can be reused, and the assembled npz is the same byte for byte.
"""

import json
import os
import re
import shutil

import numpy as np

from .io_util import TMP_PREFIX, atomic_write, write_npz_streaming, write_text_atomic

META_NAME = "meta.json"
META_FORMAT = 1
PART_RE = re.compile(r"^part_(\d+)_(\d+)\.npz$")


class PartsMismatchError(ValueError):
    """Finished parts on disk were made with flags that differ from this run's."""


def parts_dir_for(npz_path):
    return npz_path + ".parts"


def part_name(start, end):
    return f"part_{start:08d}_{end:08d}.npz"


# ------------------------------------------------------------------ parts
def write_part(parts_dir, start, images, labels=None):
    """Write samples ``start .. start + len(images) - 1`` as one part file (atomically)."""
    arrays = {"images": np.ascontiguousarray(images, dtype=np.uint8)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
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


def prepare_parts_dir(parts_dir, meta, *, overwrite, restart_flag="--overwrite True"):
    """Make ``parts_dir`` ready for this run and return its finished parts.

    ``meta`` = {"flags": {...}, "info": {...}}: "flags" are compared with the parts on disk,
    "info" only recorded. ``overwrite`` discards existing parts. A folder without finished
    parts is simply (re)started. Returns (parts, warnings).

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
            with np.load(path) as z:
                arr = z[key]
        except Exception as exc:  # truncated or foreign file
            raise ValueError(f"{path}: unreadable part ({exc}); delete it and rerun to regenerate it") from None
        if arr.shape != (end - start,) + tuple(shape_tail) or arr.dtype != dtype:
            raise ValueError(
                f"{path}: {key} has shape {arr.shape} {arr.dtype}, expected {(end - start,) + tuple(shape_tail)} "
                f"{np.dtype(dtype)}; delete it and rerun to regenerate it"
            )
        stop = min(end, num_samples)
        yield arr[cursor - start : stop - start]
        cursor = stop
    if cursor < num_samples:
        raise ValueError(f"{parts_dir}: samples {cursor}.. are missing; rerun the same command to make them")


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
    with atomic_write(out_path, "wb", suffix=".npz", tmp_dir=parts_dir) as f:
        write_npz_streaming(f, members)
    return np.concatenate(grid) if grid else None


def remove_parts(parts_dir):
    shutil.rmtree(parts_dir, ignore_errors=True)
