"""diffusers checkpoints as sampling models: a ``UNet2DModel`` folder behind ``--model_path``.

A diffusers model folder is either a bare UNet folder (``config.json`` + ``diffusion_pytorch_model
.safetensors`` or ``.bin``, optionally ``scheduler/scheduler_config.json`` or a
``scheduler_config.json`` beside it) or a pipeline folder (``model_index.json`` with ``unet/`` and
``scheduler/``). Everything here is reached through three calls of the sampling and NLL jobs:

* :func:`resolve_job` - the job with the flags the folder's configs decide (image size and
  channels, learned variance, T, beta schedule and range, variance type, prediction type,
  clipping); a flag given with another value than the config's is one error line naming both;
* :func:`read_on_rank0` - the folder's files as one byte string (rank 0 reads, every rank gets
  them), whose SHA-256 is the run's ``checkpoint_sha256``;
* :func:`maybe_diffusers_model` - the network built from those bytes: a :class:`DiffusersUNet`
  (``model(x, t) -> eps``, like the ADM UNet), or None for an ordinary ``.pt`` checkpoint.

diffusers is imported only when such a folder is used (``pip install -e .[diffusers]``).

Scheduler config -> our settings (the diffusion is built from these, in float64):

=================================  ============================================================
``num_train_timesteps`` T          ``--diffusion_steps T``
``beta_schedule`` linear           ``--noise_schedule linear`` if (beta_start, beta_end) = 1000/T *
                                   (1e-4, 0.02), else ``linear:START,END`` (linspace(START, END, T))
``beta_schedule`` scaled_linear    ``scaled_linear:START,END`` (linspace(sqrt START, sqrt END, T) ** 2)
``beta_schedule`` squaredcos_cap_v2  ``--noise_schedule cosine`` (Nichol & Dhariwal, betas <= 0.999)
``variance_type`` fixed_large      (default) sigma_t^2 = beta_t
``variance_type`` fixed_small(_log)  sigma_t^2 = posterior variance (``sigma_small``)
``variance_type`` learned_range    ``--learn_sigma True`` (6 output channels for RGB)
``prediction_type`` epsilon        eps (default); ``sample``: ``--predict_xstart True``;
                                   ``v_prediction``: converted to eps in :class:`DiffusersUNet`
``clip_sample``                    ``--clip_denoised`` (``clip_sample_range`` must be 1)
=================================  ============================================================
"""

import dataclasses
import hashlib
import json
import os
import tempfile

import numpy as np
import torch

from . import dist_util
from .errors import CheckpointError

INSTALL_HINT = "pip install -e .[diffusers]"
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_MAGIC = b"TS-DIFFUSERS-FOLDER 1\n"

# Scheduler variance types and what they become here.
_VARIANCE = {"fixed_large": False, "fixed_small": True, "fixed_small_log": True, "learned_range": None}


def import_diffusers():
    """The diffusers module, or a one-line error saying what to install."""
    try:
        import diffusers
    except ImportError:
        raise CheckpointError(f"a diffusers model folder needs the diffusers package: {INSTALL_HINT}") from None
    return diffusers


# ------------------------------------------------------------------ the folder
def folder_layout(path):
    """(UNet folder, weights file name, scheduler config file or None) of a diffusers model folder,
    or None when ``path`` is not a folder. A folder without a UNet ``config.json`` or weights is a
    one-line error."""
    if not path or not os.path.isdir(path):
        return None
    if os.path.isdir(os.path.join(path, "unet")):  # a pipeline folder (model_index.json, unet/, scheduler/)
        unet = os.path.join(path, "unet")
        candidates = [os.path.join(path, "scheduler", "scheduler_config.json")]
    else:
        unet = path
        candidates = [os.path.join(path, "scheduler", "scheduler_config.json"),
                      os.path.join(path, "scheduler_config.json")]
    if not os.path.isfile(os.path.join(unet, "config.json")):
        raise CheckpointError(f"--model_path {path}: a folder without {os.path.join(unet, 'config.json')}; pass a "
                              "diffusers UNet2DModel folder (save_pretrained) or a .pt checkpoint file")
    weights = [n for n in WEIGHT_NAMES if os.path.isfile(os.path.join(unet, n))]
    if not weights:
        raise CheckpointError(f"--model_path {path}: no {' or '.join(WEIGHT_NAMES)} in {unet}")
    scheduler = next((c for c in candidates if os.path.isfile(c)), None)
    return unet, weights[0], scheduler


def model_sha256(path):
    """The SHA-256 a model is known by (this process reads): of a checkpoint file's bytes, or of a
    diffusers folder's packed config, weights and scheduler config (what sampling hashes too)."""
    if path and os.path.isdir(path):
        return hashlib.sha256(read_folder(path)).hexdigest()
    from .io_util import sha256_file

    return sha256_file(path)


def is_diffusers_folder(path):
    """Collective: whether rank 0 sees ``path`` as a folder, i.e. a diffusers model folder rather than
    a checkpoint file (the same answer on every rank)."""
    return bool(dist_util.broadcast_object(os.path.isdir(path) if path and dist_util.get_rank() == 0 else None))


def _pack(files):
    """{name: bytes} -> one byte string (a JSON index of names and sizes, then the contents)."""
    index = json.dumps([[name, len(data)] for name, data in files.items()]).encode()
    return _MAGIC + len(index).to_bytes(8, "little") + index + b"".join(files.values())


def unpack(data):
    """The {name: bytes} of :func:`read_on_rank0`'s byte string (names: "config.json", the weights
    file name, "scheduler_config.json" when the folder has one)."""
    if not data.startswith(_MAGIC):
        raise CheckpointError("not a diffusers folder's bytes")
    pos = len(_MAGIC)
    n = int.from_bytes(data[pos:pos + 8], "little")
    index = json.loads(data[pos + 8:pos + 8 + n])
    pos += 8 + n
    out = {}
    for name, size in index:
        out[name] = data[pos:pos + size]
        pos += size
    return out


def read_folder(path, weights=True):
    """The folder's config, weights (unless ``weights`` is False) and scheduler config as one byte
    string (this process reads)."""
    unet, weights_name, scheduler = folder_layout(path)
    sources = [("config.json", os.path.join(unet, "config.json")),
               (weights_name, os.path.join(unet, weights_name) if weights else None),
               ("scheduler_config.json", scheduler)]
    files = {}
    for name, src in sources:
        if src is not None:
            with open(src, "rb") as f:
                files[name] = f.read()
    return _pack(files)


def read_on_rank0(path, weights=True):
    """Collective: :func:`read_folder` of ``path`` on rank 0, broadcast (errors raised on every rank)."""
    data, err = b"", None
    if dist_util.get_rank() == 0:
        try:
            data = read_folder(path, weights)
        except (OSError, ValueError) as exc:
            err = str(exc)
    err = dist_util.broadcast_object(err)
    if err:
        raise CheckpointError(err)
    return dist_util.broadcast_bytes(data)


def _json(files, name, path):
    try:
        return json.loads(files[name].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"--model_path {path}: {name} is not JSON ({exc})") from None


def configs_of(data, path=""):
    """(UNet config dict, scheduler config dict or None) from :func:`read_on_rank0`'s bytes."""
    files = unpack(data)
    sched = _json(files, "scheduler_config.json", path) if "scheduler_config.json" in files else None
    return _json(files, "config.json", path), sched


# ------------------------------------------------------------------ configs -> settings
def _noise_schedule(sched, steps, path):
    name = sched.get("beta_schedule", "linear")
    if sched.get("trained_betas") is not None:
        raise CheckpointError(f"--model_path {path}: trained_betas in the scheduler config are not supported; "
                              "use a named beta_schedule")
    start, end = float(sched.get("beta_start", 0.0001)), float(sched.get("beta_end", 0.02))
    if name == "squaredcos_cap_v2":
        return "cosine"
    if name == "linear":
        scale = 1000 / steps
        if (start, end) == (scale * 0.0001, scale * 0.02):
            return "linear"
        return f"linear:{start!r},{end!r}"
    if name == "scaled_linear":
        return f"scaled_linear:{start!r},{end!r}"
    raise CheckpointError(f"--model_path {path}: beta_schedule {name!r} is not supported; use linear, "
                          "scaled_linear or squaredcos_cap_v2")


def settings_from_configs(unet_cfg, sched, path=""):
    """{our flag name: value} that a diffusers folder's configs decide, plus "sigma_small" and
    "prediction_type" (the two that have no flag here). ``sched`` None: the UNet's own facts only."""
    channels = int(unet_cfg.get("in_channels", 3))
    out_channels = int(unet_cfg.get("out_channels", channels))
    if out_channels not in (channels, 2 * channels):
        raise CheckpointError(f"--model_path {path}: out_channels {out_channels} is neither in_channels "
                              f"({channels}) nor twice it")
    size = unet_cfg.get("sample_size", 64)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise CheckpointError(f"--model_path {path}: sample_size {size} is not square")
        size = size[0]
    if unet_cfg.get("class_embed_type") is not None:
        raise CheckpointError(f"--model_path {path}: class_embed_type {unet_cfg['class_embed_type']!r} is not "
                              "supported (class labels through num_class_embeds only)")
    out = {"image_size": int(size), "image_channels": channels, "learn_sigma": out_channels == 2 * channels,
           "class_cond": unet_cfg.get("num_class_embeds") is not None, "sigma_small": False,
           "prediction_type": "epsilon"}
    if sched is None:
        return out
    steps = int(sched.get("num_train_timesteps", 1000))
    variance = sched.get("variance_type", "fixed_small")
    if variance not in _VARIANCE:
        raise CheckpointError(f"--model_path {path}: variance_type {variance!r} is not supported; use fixed_small, "
                              "fixed_large or learned_range (its 'learned' predicts the variance itself)")
    if (variance == "learned_range") != out["learn_sigma"]:
        raise CheckpointError(f"--model_path {path}: variance_type {variance!r} does not fit the UNet's "
                              f"out_channels {out_channels} (learned_range needs 2 x in_channels)")
    prediction = sched.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "sample", "v_prediction"):
        raise CheckpointError(f"--model_path {path}: prediction_type {prediction!r} is not supported; use epsilon, "
                              "sample or v_prediction")
    if sched.get("rescale_betas_zero_snr"):
        raise CheckpointError(f"--model_path {path}: rescale_betas_zero_snr in the scheduler config is not "
                              "supported; set it false")
    if sched.get("thresholding"):
        raise CheckpointError(f"--model_path {path}: thresholding in the scheduler config is not supported; set it "
                              "false")
    clip = bool(sched.get("clip_sample", True))
    if clip and float(sched.get("clip_sample_range", 1.0)) != 1.0:
        raise CheckpointError(f"--model_path {path}: clip_sample_range {sched['clip_sample_range']} is not supported "
                              "(clipping here is to [-1, 1])")
    out.update(diffusion_steps=steps, noise_schedule=_noise_schedule(sched, steps, path),
               predict_xstart=prediction == "sample", clip_denoised=clip,
               sigma_small=bool(_VARIANCE[variance]), prediction_type=prediction)
    return out


def apply_settings(configs, decided, path):
    """``configs`` (settings dataclasses) with the folder's ``decided`` settings. A setting that is
    not at its default and differs from the folder's value is a one-line ValueError naming both."""
    out = []
    for cfg in configs:
        changes = {}
        for f in dataclasses.fields(cfg):
            if f.name not in decided:
                continue
            given, value = getattr(cfg, f.name), decided[f.name]
            if given != f.default and given != value:
                raise ValueError(f"--{f.name} {given} contradicts the diffusers folder {path} ({value}); drop the "
                                 "flag or pass the folder's value")
            changes[f.name] = value
        out.append(dataclasses.replace(cfg, **changes))
    return out


def resolve_configs(path, configs):
    """Collective: ``configs`` with the settings a diffusers folder ``path`` decides (unchanged for a
    checkpoint file). ``--use_fp16`` (an ADM trunk conversion) is refused for a folder."""
    if not is_diffusers_folder(path):
        return list(configs)
    unet_cfg, sched = configs_of(read_on_rank0(path, weights=False), path)
    if any(getattr(cfg, "use_fp16", False) for cfg in configs):
        raise ValueError("--use_fp16 converts an ADM UNet's trunk; for a diffusers model use --autocast fp16")
    return apply_settings(configs, settings_from_configs(unet_cfg, sched, path), path)


def resolve_job(job):
    """Collective: a :class:`~guided_diffusion.jobs.sample.SamplingJob` (or any dataclass of
    settings groups with ``run.model_path``) with the settings its diffusers folder decides."""
    names = [f.name for f in dataclasses.fields(job) if getattr(job, f.name) is not None]
    new = resolve_configs(job.run.model_path, [getattr(job, n) for n in names])
    return dataclasses.replace(job, **dict(zip(names, new)))


def read_model_bytes(path):
    """Collective: the bytes behind ``--model_path``: a checkpoint file's (read on rank 0,
    broadcast), or a diffusers folder's files packed by :func:`read_on_rank0`."""
    if is_diffusers_folder(path):
        return read_on_rank0(path)
    return dist_util.read_file_on_rank0(path)


def sigma_small_of(data):
    """Whether ``data`` (:func:`read_on_rank0`'s bytes) is a folder whose scheduler asks for the
    posterior (fixed_small) variance; False for a checkpoint file's bytes or None."""
    if not data or not data.startswith(_MAGIC):
        return False
    unet_cfg, sched = configs_of(data)
    return settings_from_configs(unet_cfg, sched)["sigma_small"]


# ------------------------------------------------------------------ the network
class DiffusersUNet(torch.nn.Module):
    """A diffusers ``UNet2DModel`` called like the ADM UNet: ``model(x, t, y=None) -> out``.

    :param unet: the ``UNet2DModel``.
    :param prediction_type: "epsilon" or "sample" (returned as the network gives them) or
        "v_prediction" (converted to eps: eps = sqrt(a) v + sqrt(1 - a) x, a = alpha_bar at t
        by the loop's own rule for fractional times, ``table[floor(t)]``).
    :param alphas_cumprod: (T,) float64 base alpha_bar, needed for "v_prediction".

    ``x``: (B, C, H, W); ``t``: (B,) ORIGINAL timesteps (int64, or float64 in the S-/F-PNDM
    warm-up stages), passed to the UNet as they are; output (B, C or 2C, H, W) in x's dtype.
    """

    def __init__(self, unet, prediction_type="epsilon", alphas_cumprod=None):
        super().__init__()
        self.unet = unet
        self.prediction_type = prediction_type
        num = unet.config.get("num_class_embeds")
        self.num_classes = int(num) if num is not None else None
        self._alpha_at = None
        if prediction_type == "v_prediction":
            from .sampler.solvers import floor_alpha_at

            self._alpha_at = floor_alpha_at(alphas_cumprod)

    def forward(self, x, t, y=None, **kwargs):
        if kwargs:
            raise TypeError(f"a diffusers UNet takes no {', '.join(sorted(kwargs))}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        out = self.unet(x, t, class_labels=y, return_dict=False)[0]
        if self._alpha_at is None:
            return out
        a = self._alpha_at(t).to(device=x.device, dtype=torch.float64).reshape(-1, 1, 1, 1)
        c = x.shape[1]
        eps = torch.sqrt(a).to(x.dtype) * out[:, :c] + torch.sqrt(1 - a).to(x.dtype) * x
        return torch.cat([eps, out[:, c:]], dim=1) if out.shape[1] > c else eps


def unet_from_bytes(data):
    """The ``UNet2DModel`` of :func:`read_on_rank0`'s bytes (diffusers' own loader, so renamed
    weights of older diffusers versions are converted as diffusers converts them)."""
    diffusers = import_diffusers()
    files = unpack(data)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("config.json", *WEIGHT_NAMES):
            if name in files:
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write(files[name])
        try:
            return diffusers.UNet2DModel.from_pretrained(tmp, local_files_only=True, low_cpu_mem_usage=False)
        except Exception as exc:  # diffusers' many error types: one line
            raise CheckpointError(f"the diffusers folder's UNet does not load ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def maybe_diffusers_model(path, diffusion_cfg, data):
    """The network of a diffusers folder ``path`` (from :func:`read_on_rank0`'s ``data``), or None
    when ``data`` is an ordinary checkpoint file's bytes."""
    if not data.startswith(_MAGIC):
        return None
    unet_cfg, sched = configs_of(data, path)
    decided = settings_from_configs(unet_cfg, sched, path)
    alphas = None
    if decided["prediction_type"] == "v_prediction":
        from .schedules import get_named_beta_schedule

        alphas = np.cumprod(1.0 - get_named_beta_schedule(diffusion_cfg.noise_schedule,
                                                          diffusion_cfg.diffusion_steps))
    return DiffusersUNet(unet_from_bytes(data), decided["prediction_type"], alphas)
