"""Reading model checkpoints with clear errors (``torch.load(..., weights_only=True)`` only)."""

import io
import os
import re

import torch
from .errors import CheckpointError  # noqa: F401 (raised here; defined with the other user errors)
from .io_util import isfile, open_read, read_bytes, via_blobfile


def _as_state_dict(obj, path):
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        sd = obj["state_dict"]
    else:
        raise CheckpointError(
            f"{path}: not a model state_dict (expected a dict of tensors, got {type(obj).__name__})"
        )
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def read_checkpoint(path, data=None):
    """Load a state_dict from ``path`` (or from its bytes ``data``) onto the CPU, weights only.

    :raises CheckpointError: one-line message naming the file and the fix.
    """
    if data is None:
        if not path:
            raise CheckpointError("--model_path is empty: pass the checkpoint file to sample from")
        if not isfile(path):
            raise CheckpointError(f"--model_path {path}: no such file")
        if via_blobfile(path):
            data = read_bytes(path)
    try:
        obj = torch.load(io.BytesIO(data) if data is not None else path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "unreadable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise CheckpointError(
            f"--model_path {path}: not a readable PyTorch weights file ({first[:160]})"
        ) from None
    return _as_state_dict(obj, path)


def _likely_flags(missing, unexpected, misshaped):
    """Guess which model flags differ between a checkpoint and the model, from key differences."""
    keys = missing + unexpected + [k for k, _, _ in misshaped]
    hints = []

    def any_match(pattern):
        return any(re.search(pattern, k) for k in keys)

    if any_match(r"^label_emb"):
        hints.append("class_cond")
    if any_match(r"^out\.2\.") or any_match(r"^input_blocks\.0\.0\."):
        hints.append("learn_sigma / image_channels")
    if any_match(r"^time_embed"):
        hints.append("num_channels")
    if any_match(r"emb_layers"):
        hints.append("use_scale_shift_norm / num_channels")
    if any_match(r"\.(qkv|proj_out|norm)\."):
        hints.append("attention_resolutions")
    if any_match(r"\.op\.|\.conv\.|h_upd|x_upd") or any(
        re.search(r"^(input|output)_blocks\.\d+\.\d+\.in_layers", k) for k in missing + unexpected
    ):
        hints.append("resblock_updown")
    if any_match(r"^(input|output)_blocks\.\d+"):
        hints.append("num_res_blocks / channel_mult / image_size")
    if any_match(r"in_layers|out_layers|skip_connection"):
        hints.append("num_channels / channel_mult")
    seen = []
    for h in hints:
        if h not in seen:
            seen.append(h)
    return seen or ["the model flags"]


def check_state_dict(model, state_dict, path, flags=None):
    """Raise :class:`CheckpointError` unless ``state_dict`` fits ``model`` exactly (keys and shapes).

    The message names up to 3 missing, unexpected and mis-shaped keys each and the flags that
    likely differ. (``use_new_attention_order`` cannot be detected: it is not in the keys.) With
    ``flags`` (the model flags used) and a ``<name>.json`` of training flags beside the checkpoint, the
    flags that differ from that file are named instead of the guess.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshaped = [
        (k, tuple(state_dict[k].shape), tuple(v.shape))
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or misshaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:2])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2])})")
    if misshaped:
        shown = ", ".join(f"{k} file {a} vs model {b}" for k, a, b in misshaped[:2])
        parts.append(f"{len(misshaped)} mis-shaped (e.g. {shown})")
    raise CheckpointError(
        f"--model_path {path} does not fit the model flags: {'; '.join(parts)}. "
        f"{_differing_flags(path, flags) or _guess(missing, unexpected, misshaped, path)}"
    )


def _guess(missing, unexpected, misshaped, path):
    return f"Likely differing flags: {', '.join(_likely_flags(missing, unexpected, misshaped))}{_flags_hint(path)}"


def _sidecar_flags(path):
    import json

    try:
        with open_read(os.path.splitext(str(path))[0] + ".json", "r") as f:
            flags = json.load(f)["model_flags"]
    except Exception:  # no sidecar (OSError, or blobfile's errors), not JSON, no "model_flags"
        return None
    return flags if isinstance(flags, dict) else None


def _differing_flags(path, flags):
    """'Flags that differ from NAME.json: --num_channels 64 (file: 32)' or '' (no file, no difference)."""
    saved = _sidecar_flags(path) if flags else None
    if not saved:
        return ""

    def norm(v):
        return str(v).lower() if isinstance(v, bool) else str(v)

    diff = [f"--{k} {flags[k]} (file: {v})" for k, v in saved.items() if k in flags and norm(flags[k]) != norm(v)]
    if not diff:
        return ""
    sidecar = os.path.splitext(str(path))[0] + ".json"
    from .demo import DEMO_FLAGS

    demo = os.path.realpath(sidecar) == os.path.realpath(DEMO_FLAGS)
    tail = ". This is the bundled demo model: give no model flags and its own are used" if demo else ""
    return f"Flags that differ from {sidecar}: {', '.join(diff)}{tail}"


def _flags_hint(path):
    """A pointer to the checkpoint's own flags when a ``<name>.json`` with "model_flags" lies beside it."""
    import json

    sidecar = os.path.splitext(str(path))[0] + ".json"
    try:
        with open_read(sidecar, "r") as f:
            flags = json.load(f)["model_flags"]
    except Exception:  # no sidecar (OSError, or blobfile's errors), not JSON, no "model_flags"
        return ""
    from .demo import DEMO_FLAGS

    if os.path.realpath(sidecar) == os.path.realpath(DEMO_FLAGS):
        return (". This is the bundled demo model: give no model flags (its own are used), or pass those "
                f"in {sidecar}")
    text = " ".join(f"--{k} {v}" for k, v in flags.items())
    return f". Its training flags are in {sidecar}: {text}"


def load_checkpoint_into(model, path, data=None, flags=None):
    """Read ``path`` (or its bytes), check it against ``model`` (built from ``flags``) and load it strictly."""
    state_dict = read_checkpoint(path, data=data)
    check_state_dict(model, state_dict, path, flags)
    model.load_state_dict(state_dict, strict=True)
    return model
