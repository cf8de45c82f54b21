#!/usr/bin/env python
"""Offline FID / sFID / Inception Score / precision / recall, faithful to guided-diffusion's TF evaluator,
plus KID and a bootstrap uncertainty for FID.

    python evaluations/evaluator.py REF.npz SAMPLE.npz [--json out.json]
    python evaluations/evaluator.py --ref_batch REF.npz --sample_batch SAMPLE.npz
    python evaluations/evaluator.py --stats IMAGES.npz --out STATS.npz

An input ``.npz`` holds ``arr_0``: uint8 images (N, H, W, C) with C in {1, 3} (grey is replicated
to RGB), any H and W, and/or precomputed statistics ``mu``, ``sigma`` (pool_3) and optionally
``mu_s``, ``sigma_s`` (spatial), ``pool_3`` (the N x 2048 features themselves, needed for KID) and
``num_images``. As in guided-diffusion, precomputed statistics are used for FID / sFID when present;
precision / recall read images or a --stats file's ``pool_3`` on each side; the Inception Score needs
sample images.
See evaluations/README.md.

In-process (e.g. from a table driver): :func:`evaluate_samples`.
"""

import argparse
import contextlib
import json
import os
import sys
import zipfile

import numpy as np

from evaluations import inception as _inception  # installed with the project (pip install -e .)
from evaluations import metrics as _metrics
from guided_diffusion.io_util import atomic_write
from guided_diffusion.settings import EvalConfig, add_settings

import torch

__all__ = [
    "EvaluatorInputError",
    "NpzBatch",
    "open_batch",
    "compute_activations",
    "evaluate",
    "evaluate_samples",
    "batch_from_array",
    "compute_statistics_file",
    "format_results",
    "main",
    "METRIC_NAMES",
]

# (json key, printed name)
METRIC_NAMES = [
    ("inception_score", "Inception Score"),
    ("fid", "FID"),
    ("sfid", "sFID"),
    ("precision", "Precision"),
    ("recall", "Recall"),
]

# Added metrics: (json key, meaning). Printed after the guided-diffusion five; see format_results.
EXTRA_KEYS = [
    ("fid_bootstrap_sd", "standard deviation of FID over bootstrap resamples of the sample features"),
    ("kid_mean", "KID: mean over subsets of the unbiased MMD^2 (raw units; printed x10^3)"),
    ("kid_std", "KID: standard deviation of the subset estimates (raw units)"),
    ("kid_se", "KID: kid_std / sqrt(kid_subsets), the error of kid_mean from the choice of subsets"),
]

FID_BOOTSTRAP_ROUNDS = EvalConfig.fid_bootstrap  # the defaults are declared once, in guided_diffusion.settings
FID_BOOTSTRAP_SEED = EvalConfig.bootstrap_seed
SMALL_N = 2048  # below the feature dimension the sample covariance is singular
PUBLISHED_N = 50000  # the sample count of published FIDs (guided-diffusion, ADM, TS-DPM)

IS_SPLIT_SIZE = 5000  # guided-diffusion: compute_inception_score(split_size=5000)
PR_K = 3  # guided-diffusion: ManifoldEstimator(nhood_sizes=[3])
DEFAULT_BATCH_SIZE = 50

SAVE_HINT = "save with np.savez(path, arr_0=images) where images is uint8 (N, H, W, 3) or (N, H, W, 1)"


class EvaluatorInputError(ValueError):
    """An input or output path is unusable; the message is one line naming the file and the fix."""


# ----------------------------------------------------------------------------------------------
# Input files
# ----------------------------------------------------------------------------------------------


class NpzBatch:
    """A validated ``.npz`` input: image header (streamed later) and / or precomputed statistics."""

    def __init__(self, path, image_shape=None, image_dtype=None, fortran=False, stats=None, pool_features=None,
                 stats_num_images=None):
        self.path = path
        self.image_shape = image_shape  # (N, H, W[, C]) or None
        self.image_dtype = image_dtype
        self.fortran = fortran
        self.stats = stats or {}  # subset of mu, sigma, mu_s, sigma_s (float64 arrays)
        self.pool_features = pool_features  # (N, 2048) float32 from the file's 'pool_3', or None
        self.stats_num_images = stats_num_images  # the file's 'num_images', or None

    @property
    def has_images(self):
        return self.image_shape is not None

    @property
    def num_images(self):
        return int(self.image_shape[0]) if self.has_images else 0

    @property
    def has_pool_stats(self):
        return "mu" in self.stats

    @property
    def has_spatial_stats(self):
        return "mu_s" in self.stats

    @property
    def has_pool_features(self):
        return self.pool_features is not None

    @property
    def count(self):
        """Number of images behind this file's numbers: its images, else its stored features or count."""
        if self.has_images:
            return self.num_images
        if self.has_pool_features:
            return int(self.pool_features.shape[0])
        return self.stats_num_images

    def iter_batches(self, batch_size):
        """Yield uint8 arrays (b, H, W[, C]) without loading the whole array."""
        if not self.has_images:
            return
        shape = tuple(self.image_shape)
        per_image = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(self.image_dtype).itemsize
        if self.fortran:  # rare: no streaming for Fortran-ordered arrays
            with np.load(self.path, allow_pickle=False) as obj:
                arr = np.ascontiguousarray(obj["arr_0"])
            for i in range(0, shape[0], batch_size):
                yield arr[i : i + batch_size]
            return
        with zipfile.ZipFile(self.path) as zf, zf.open("arr_0.npy") as f:
            _read_npy_header(f, self.path)
            for i in range(0, shape[0], batch_size):
                b = min(batch_size, shape[0] - i)
                raw = bytearray(b * per_image)  # writable, so torch can wrap it without a copy
                got = f.readinto(raw)
                while got < len(raw):
                    more = f.readinto(memoryview(raw)[got:])
                    if not more:
                        break
                    got += more
                if got != b * per_image:
                    raise EvaluatorInputError(
                        f"{self.path}: arr_0 is truncated (expected {shape[0]} images); re-save the file"
                    )
                yield np.frombuffer(raw, dtype=self.image_dtype).reshape((b,) + shape[1:])


def _read_npy_header(f, path):
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version == (2, 0):
            return np.lib.format.read_array_header_2_0(f)
    except Exception as e:  # malformed header
        raise EvaluatorInputError(f"{path}: arr_0 is not a valid .npy member ({e}); {SAVE_HINT}") from None
    raise EvaluatorInputError(f"{path}: arr_0 uses .npy format {version}, unsupported; {SAVE_HINT}")


_STAT_SHAPES = {
    "mu": (_inception.POOL_DIM,),
    "sigma": (_inception.POOL_DIM, _inception.POOL_DIM),
    "mu_s": (_inception.SPATIAL_DIM,),
    "sigma_s": (_inception.SPATIAL_DIM, _inception.SPATIAL_DIM),
}


def open_batch(path, role="input"):
    """Validate ``path`` (headers only, images are not read) and return an :class:`NpzBatch`.

    Raises :class:`EvaluatorInputError` with a one-line message naming the file and the fix.
    """
    if path is None:
        raise EvaluatorInputError(f"no {role} file given")
    if not os.path.exists(path):
        raise EvaluatorInputError(f"{path}: {role} file not found; check the path")
    if os.path.isdir(path):
        raise EvaluatorInputError(f"{path}: {role} is a directory, expected an .npz file; {SAVE_HINT}")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic == b"\x93NUMPY":
        raise EvaluatorInputError(f"{path}: is a .npy file, expected an .npz archive; {SAVE_HINT}")
    if not zipfile.is_zipfile(path):
        raise EvaluatorInputError(f"{path}: is not an .npz archive; {SAVE_HINT}")
    try:
        with zipfile.ZipFile(path) as zf:
            names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
            header = None
            if "arr_0" in names:
                with zf.open("arr_0.npy") as f:
                    header = _read_npy_header(f, path)
    except EvaluatorInputError:
        raise
    except Exception as e:
        raise EvaluatorInputError(f"{path}: cannot be read as .npz ({e}); {SAVE_HINT}") from None

    image_shape = image_dtype = None
    fortran = False
    if header is not None:
        shape, fortran, dtype = header
        if dtype != np.uint8:
            raise EvaluatorInputError(
                f"{path}: arr_0 has dtype {dtype}, expected uint8 in [0, 255]; convert float images in "
                "[-1, 1] with ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8)"
            )
        ok = (len(shape) == 4 and shape[3] in (1, 3)) or len(shape) == 3
        if not ok:
            raise EvaluatorInputError(
                f"{path}: arr_0 has shape {tuple(shape)}, expected NHWC (N, H, W, 3) or (N, H, W, 1); "
                "transpose NCHW arrays with x.transpose(0, 2, 3, 1)"
            )
        if shape[0] < 1 or shape[1] < 1 or shape[2] < 1:
            raise EvaluatorInputError(f"{path}: arr_0 has shape {tuple(shape)}, which holds no image")
        image_shape, image_dtype = tuple(int(s) for s in shape), dtype

    stats = {}
    pool_features = stats_num_images = None
    if names & {"mu", "sigma", "mu_s", "sigma_s", "pool_3", "num_images"}:
        try:
            with np.load(path, allow_pickle=False) as obj:
                for key in ("mu", "sigma", "mu_s", "sigma_s"):
                    if key in names:
                        stats[key] = np.asarray(obj[key], dtype=np.float64)
                if "pool_3" in names:
                    pool_features = obj["pool_3"]
                if "num_images" in names:
                    stats_num_images = obj["num_images"]
        except Exception as e:
            raise EvaluatorInputError(f"{path}: cannot read its statistics ({e})") from None
        for a, b in (("mu", "sigma"), ("mu_s", "sigma_s")):
            if (a in stats) != (b in stats):
                have, lack = (a, b) if a in stats else (b, a)
                raise EvaluatorInputError(f"{path}: has '{have}' but no '{lack}'; store both or neither")
        for key, arr in stats.items():
            if arr.shape != _STAT_SHAPES[key]:
                raise EvaluatorInputError(
                    f"{path}: '{key}' has shape {arr.shape}, expected {_STAT_SHAPES[key]} (TF Inception "
                    "pool_3 / mixed_6 statistics); recompute with evaluator.py --stats"
                )
            if not np.isfinite(arr).all():
                raise EvaluatorInputError(f"{path}: '{key}' contains NaN or Inf; recompute the statistics")
        if "mu_s" in stats and "mu" not in stats:
            raise EvaluatorInputError(f"{path}: has mu_s/sigma_s but no mu/sigma; store all four")
    if pool_features is not None:
        if "mu" not in stats:
            raise EvaluatorInputError(
                f"{path}: has 'pool_3' features but no mu/sigma; recompute with evaluator.py --stats")
        if (pool_features.ndim != 2 or pool_features.shape[1] != _inception.POOL_DIM or pool_features.shape[0] < 2
                or pool_features.dtype.kind != "f"):
            raise EvaluatorInputError(
                f"{path}: 'pool_3' has shape {pool_features.shape} and dtype {pool_features.dtype}, expected float "
                f"(N >= 2, {_inception.POOL_DIM}); recompute with evaluator.py --stats"
            )
        pool_features = np.asarray(pool_features, dtype=np.float32)
        if not np.isfinite(pool_features).all():
            raise EvaluatorInputError(f"{path}: 'pool_3' contains NaN or Inf; recompute the statistics")
    if stats_num_images is not None:
        if stats_num_images.shape != () or stats_num_images.dtype.kind not in "iu" or int(stats_num_images) < 2:
            raise EvaluatorInputError(
                f"{path}: 'num_images' must be an integer >= 2; recompute with evaluator.py --stats")
        stats_num_images = int(stats_num_images)

    if image_shape is None and not stats:
        raise EvaluatorInputError(
            f"{path}: has no 'arr_0' images and no 'mu'/'sigma' statistics (keys: {sorted(names)}); {SAVE_HINT}"
        )
    if image_shape is not None and "mu" not in stats and image_shape[0] < 2:
        raise EvaluatorInputError(
            f"{path}: holds {image_shape[0]} image; at least 2 are needed for a covariance"
        )
    return NpzBatch(path, image_shape, image_dtype, bool(fortran), stats, pool_features, stats_num_images)


class _ArrayBatch(NpzBatch):
    """In-memory uint8 images, used like an :class:`NpzBatch` (see :func:`batch_from_array`)."""

    def __init__(self, images, name):
        super().__init__(name, tuple(int(s) for s in images.shape), images.dtype)
        self._images = images

    def iter_batches(self, batch_size):
        for i in range(0, len(self._images), batch_size):
            yield self._images[i : i + batch_size]


def batch_from_array(images, name="<samples array>"):
    """Wrap uint8 NHWC images (numpy array or CPU tensor) held in memory as an evaluator input."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise EvaluatorInputError(
            f"{name}: images have dtype {images.dtype}, expected uint8 in [0, 255]; convert float images in "
            "[-1, 1] with ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8)"
        )
    if not ((images.ndim == 4 and images.shape[3] in (1, 3)) or images.ndim == 3):
        raise EvaluatorInputError(
            f"{name}: images have shape {images.shape}, expected NHWC (N, H, W, 3) or (N, H, W, 1); "
            "transpose NCHW arrays with x.transpose(0, 2, 3, 1)"
        )
    if images.shape[0] < 2 or min(images.shape[1:3]) < 1:
        raise EvaluatorInputError(f"{name}: images have shape {images.shape}; at least 2 images are needed")
    return _ArrayBatch(images, name)


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def _exact_float32():
    """Keep cuDNN / cuBLAS in true float32 (TF32 would perturb features by ~1e-3)."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _batches_of(images, batch_size):
    if isinstance(images, NpzBatch):
        yield from images.iter_batches(batch_size)
    else:
        for i in range(0, len(images), batch_size):
            yield images[i : i + batch_size]


def compute_activations(images, net=None, batch_size=DEFAULT_BATCH_SIZE, device=None, progress=None,
                        want_spatial=True, want_logits=True, desc="features"):
    """Inception activations of uint8 NHWC images (array, tensor or :class:`NpzBatch`).

    Returns a dict of float32 numpy arrays: ``pool`` (N, 2048), ``spatial`` (N, 2023) if
    ``want_spatial``, ``logits`` (N, 1008) if ``want_logits`` and the weights have a logits layer.
    ``progress``: True / False, or None to show a bar only on a terminal.
    """
    from tqdm import tqdm

    device = torch.device(device or default_device())
    if net is None:
        net = _inception.load_inception(None, device)
    total = images.num_images if isinstance(images, NpzBatch) else len(images)
    chunks = {"pool": []}
    if want_spatial:
        chunks["spatial"] = []
    if want_logits and net.has_logits:
        chunks["logits"] = []
    bar = tqdm(total=total, unit="img", desc=desc, disable=(None if progress is None else not progress),
               file=sys.stderr, leave=False)
    try:
        with torch.inference_mode(), _exact_float32():
            for batch in _batches_of(images, batch_size):
                if isinstance(batch, torch.Tensor):
                    x = batch
                else:
                    arr = np.asarray(batch)
                    x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
                if x.dtype != torch.uint8:
                    raise TypeError(f"images must be uint8, got {x.dtype}")
                out = net(x.to(device, non_blocking=True), want_spatial=want_spatial, want_logits=want_logits)
                for key in chunks:
                    chunks[key].append(out[key].float().cpu().numpy())
                bar.update(x.shape[0])
    finally:
        bar.close()
    return {k: (np.concatenate(v) if v else np.zeros((0, 0), np.float32)) for k, v in chunks.items()}


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def _resolve(x, role):
    if isinstance(x, NpzBatch):
        return x
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return batch_from_array(x, f"<{role} array>")
    return open_batch(x, role)


def _count_text(n):
    return f"{n:,}" if n is not None else "an unknown number of"


def _sample_size_messages(sample_n, ref_n, kid_result, kid_subset_size):
    """(warnings, notes) about sample counts that make the numbers biased or non-standard."""
    warnings_, notes = [], []
    for who, n in (("samples", sample_n), ("reference images", ref_n)):
        if n is not None and n < SMALL_N:
            warnings_.append(
                f"FID/sFID from {n:,} {who}: below {SMALL_N:,} (the feature dimension) the covariance is singular "
                f"and FID is strongly biased upward; not comparable with published {PUBLISHED_N:,}-sample FIDs "
                "(compare only at equal N)"
            )
    if sample_n is not None and SMALL_N <= sample_n < PUBLISHED_N:
        notes.append(
            f"FID from {sample_n:,} samples is biased upward relative to the {PUBLISHED_N:,} of published numbers; "
            "compare only at equal N (the bootstrap sd does not include this bias)"
        )
    if kid_result is not None and kid_result["subset_size"] < kid_subset_size:
        notes.append(
            f"KID subsets capped at {kid_result['subset_size']:,} (< {kid_subset_size:,}) by the smaller set: the "
            "mean stays unbiased but is noisier"
        )
    return warnings_, notes


def evaluate(ref, sample, inception_path=None, device=None, batch_size=DEFAULT_BATCH_SIZE,
             progress=None, pr_batch_size=5000, fid_method=EvalConfig.fid_method, *, net=None,
             kid_subsets=_metrics.KID_SUBSETS, kid_subset_size=_metrics.KID_SUBSET_SIZE,
             kid_seed=_metrics.KID_SEED, fid_bootstrap=FID_BOOTSTRAP_ROUNDS, bootstrap_seed=FID_BOOTSTRAP_SEED):
    """Compute all metrics that ``ref`` and ``sample`` allow.

    ``ref`` / ``sample``: paths, :class:`NpzBatch` or uint8 NHWC image arrays. ``fid_method``:
    "sqrtm" (guided-diffusion's, default) or "eigh" (same quantity, faster; see
    :func:`metrics.frechet_distance`). ``net``: an already loaded Inception (else loaded from
    ``inception_path``). ``kid_subsets`` (0: no KID), ``kid_subset_size``, ``kid_seed``: see
    :func:`metrics.kid`. ``fid_bootstrap``: bootstrap rounds for the FID sd (0: none),
    ``bootstrap_seed``: its seed (see :func:`metrics.fid_bootstrap`).

    Returns a dict with the five metric keys of :data:`METRIC_NAMES` and the keys of
    :data:`EXTRA_KEYS` (float or None), ``not_computed`` {key: reason}, ``notes``, ``warnings``,
    the sample counts ``num_samples`` / ``num_ref`` (None when a statistics file does not say),
    the settings and provenance fields.
    """
    ref = _resolve(ref, "reference batch")
    sample = _resolve(sample, "sample batch")
    device = torch.device(device or default_device())
    results = {key: None for key, _ in METRIC_NAMES}
    results.update({key: None for key, _ in EXTRA_KEYS})
    reasons = {}
    notes = []

    need_net = ref.has_images or sample.has_images
    if net is None and need_net:
        net = _inception.load_inception(inception_path, device)
    def pr_count(batch):  # images, or the pool_3 features a --stats file keeps (what precision/recall read)
        return batch.num_images if batch.has_images else (len(batch.pool_features) if batch.has_pool_features else 0)

    pr_possible = min(pr_count(ref), pr_count(sample)) > PR_K
    is_possible = sample.has_images and net.has_logits
    want_kid = kid_subsets > 0

    def acts_for(batch, want_logits, want_features, desc):
        # Images are run through the network only for what the file's statistics do not cover.
        needed = ((pr_possible and not batch.has_pool_features) or want_logits
                  or not (batch.has_pool_stats and batch.has_spatial_stats)
                  or (want_features and not batch.has_pool_features))
        if not (batch.has_images and needed):
            return None
        return compute_activations(batch, net, batch_size, device, progress,
                                   want_spatial=not batch.has_spatial_stats, want_logits=want_logits,
                                   desc=desc)

    ref_acts = acts_for(ref, False, want_kid, "reference")
    sample_acts = acts_for(sample, is_possible, want_kid or fid_bootstrap > 0, "samples")

    def stats_of(batch, acts, spatial):
        mu_key, sigma_key, feat = ("mu_s", "sigma_s", "spatial") if spatial else ("mu", "sigma", "pool")
        if mu_key in batch.stats:
            return batch.stats[mu_key], batch.stats[sigma_key]
        if acts is not None and feat in acts:
            return _metrics.statistics(acts[feat])
        return None

    def features_of(batch, acts):
        # The file's own features go with its own statistics (they take precedence, as for FID).
        if batch.has_pool_features:
            return batch.pool_features
        if acts is not None:
            return acts["pool"]
        return None

    for batch in (ref, sample):
        if batch.has_images and batch.has_pool_stats:
            notes.append(f"{batch.path}: precomputed mu/sigma{'/mu_s/sigma_s' if batch.has_spatial_stats else ''}"
                         f"{'/pool_3' if batch.has_pool_features else ''} used for FID/sFID"
                         f"{'/KID' if batch.has_pool_features else ''} (as guided-diffusion does); images used for "
                         "the rest")

    s_ref, s_sample = stats_of(ref, ref_acts, False), stats_of(sample, sample_acts, False)
    results["fid"] = _metrics.frechet_distance(s_ref[0], s_ref[1], s_sample[0], s_sample[1],
                                               method=fid_method)
    ss_ref, ss_sample = stats_of(ref, ref_acts, True), stats_of(sample, sample_acts, True)
    if ss_ref is not None and ss_sample is not None:
        results["sfid"] = _metrics.frechet_distance(ss_ref[0], ss_ref[1], ss_sample[0], ss_sample[1],
                                                    method=fid_method)
    else:
        lacking = ref if ss_ref is None else sample
        reasons["sfid"] = f"{lacking.path} has mu/sigma but no images and no mu_s/sigma_s spatial statistics"

    if not sample.has_images:
        reasons["inception_score"] = f"{sample.path} holds statistics only; the Inception Score needs sample images"
    elif not net.has_logits:
        reasons["inception_score"] = (
            f"the Inception weights ({os.path.basename(net.weights_source.split(' (')[0])}) have no "
            "softmax/logits layer; pass --inception_path pt_inception-2015-12-05-6726825d.pth "
            "(pytorch-fid) or NVIDIA's full inception-2015-12-05.pt"
        )
    else:
        probs = _metrics.softmax(sample_acts["logits"])
        results["inception_score"] = _metrics.inception_score(probs, split_size=IS_SPLIT_SIZE)

    if not (pr_count(ref) and pr_count(sample)):
        lacking = ref if not pr_count(ref) else sample
        why = (f"{lacking.path} holds mu/sigma only; precision/recall need images or pool_3 features on both "
               "sides (evaluator.py --stats writes them)")
        reasons["precision"] = reasons["recall"] = why
    elif not pr_possible:
        why = f"precision/recall need more than k={PR_K} images per set"
        reasons["precision"] = reasons["recall"] = why
    else:
        p, r = _metrics.precision_recall(features_of(ref, ref_acts), features_of(sample, sample_acts), k=PR_K,
                                         batch_size=pr_batch_size, device=device)
        results["precision"], results["recall"] = p, r

    ref_feats, sample_feats = features_of(ref, ref_acts), features_of(sample, sample_acts)

    def no_features_reason(batch, what):
        return (f"{batch.path} holds mu/sigma but no pool_3 features ({what} needs them; statistics files "
                "written before KID support lack them); regenerate it with evaluator.py --stats IMAGES.npz "
                "--out STATS.npz")

    kid_result = None
    kid_keys = ("kid_mean", "kid_std", "kid_se")
    if not want_kid:
        for key in kid_keys:
            reasons[key] = "disabled (--kid_subsets 0)"
    elif ref_feats is None or sample_feats is None:
        why = no_features_reason(ref if ref_feats is None else sample, "KID")
        for key in kid_keys:
            reasons[key] = why
    else:
        # Set 1 = samples, set 2 = reference, as torch-fidelity's input1 / input2.
        kid_result = _metrics.kid(sample_feats, ref_feats, num_subsets=kid_subsets, subset_size=kid_subset_size,
                                  seed=kid_seed, progress=bool(progress))
        results["kid_mean"], results["kid_std"], results["kid_se"] = (
            kid_result["mean"], kid_result["std"], kid_result["se"])

    if fid_bootstrap <= 0:
        reasons["fid_bootstrap_sd"] = "disabled (--fid_bootstrap 0)"
    elif sample_feats is None:
        reasons["fid_bootstrap_sd"] = no_features_reason(sample, "the FID bootstrap")
    else:
        boot = _metrics.fid_bootstrap(sample_feats, s_ref[0], s_ref[1], rounds=fid_bootstrap, seed=bootstrap_seed,
                                      device=device, progress=bool(progress))
        results["fid_bootstrap_sd"] = boot["sd"]

    num_samples, num_ref = sample.count, ref.count
    warnings_, size_notes = _sample_size_messages(num_samples, num_ref, kid_result, kid_subset_size)
    results.update(
        not_computed=reasons,
        notes=notes + size_notes,
        warnings=warnings_,
        ref_batch=ref.path,
        sample_batch=sample.path,
        num_ref_images=ref.num_images,
        num_sample_images=sample.num_images,
        num_samples=num_samples,
        num_ref=num_ref,
        inception_weights=net.weights_source if (net is not None and need_net) else None,
        fid_method=fid_method,
        fid_bootstrap_rounds=int(fid_bootstrap) if results["fid_bootstrap_sd"] is not None else None,
        fid_bootstrap_seed=bootstrap_seed if results["fid_bootstrap_sd"] is not None else None,
        kid_subsets=int(kid_subsets) if kid_result is not None else None,
        kid_subset_size=kid_result["subset_size"] if kid_result is not None else None,
        kid_seed=kid_seed if kid_result is not None else None,
    )
    return results


def evaluate_samples(samples, ref, *, net=None, inception_path=None, device=None, batch_size=DEFAULT_BATCH_SIZE,
                     progress=False, fid_method=EvalConfig.fid_method, kid_subsets=_metrics.KID_SUBSETS,
                     kid_subset_size=_metrics.KID_SUBSET_SIZE, kid_seed=_metrics.KID_SEED,
                     fid_bootstrap=FID_BOOTSTRAP_ROUNDS, bootstrap_seed=FID_BOOTSTRAP_SEED, pr_batch_size=5000):
    """In-process evaluation of one set of samples against a reference, e.g. for a table driver.

    ``samples``: a sample ``.npz`` path, an :class:`NpzBatch`, or uint8 NHWC images in memory
    (numpy array or tensor, (N, H, W, 3) / (N, H, W, 1) / (N, H, W)). ``ref``: a reference
    ``.npz`` (statistics from ``--stats`` -- with ``pool_3`` for KID -- and/or images). ``net``: a
    loaded Inception (``inception.load_inception(...)``) to reuse across calls. Bad inputs raise
    :class:`EvaluatorInputError` (one-line message).

    Returns :func:`evaluate`'s dict; the keys a table usually wants are ``fid``,
    ``fid_bootstrap_sd``, ``kid_mean``, ``kid_std``, ``kid_se`` (raw units; x10^3 for printing),
    ``num_samples``, ``num_ref``, ``not_computed`` and ``warnings``.
    """
    return evaluate(ref, samples, inception_path=inception_path, device=device, batch_size=batch_size,
                    progress=progress, pr_batch_size=pr_batch_size, fid_method=fid_method, net=net,
                    kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, kid_seed=kid_seed,
                    fid_bootstrap=fid_bootstrap, bootstrap_seed=bootstrap_seed)


def _sizes(results, images_only=False):
    if images_only:  # precision / recall: the images, or a statistics file's pool_3 features (as many as its N)
        ns = results.get("num_sample_images") or results.get("num_samples")
        nr = results.get("num_ref_images") or results.get("num_ref")
    else:
        ns, nr = results.get("num_samples"), results.get("num_ref")
    if ns is None and nr is None:
        return ""
    ref_text = f"{nr:,} reference images" if nr is not None else "reference statistics of unknown N"
    return f"N = {_count_text(ns)} samples vs {ref_text}"


def format_results(results):
    """The printed report: one ``Name: value ...`` line per metric, or the reason it is missing.

    Each line starts with ``Name: value`` (the number first, as guided-diffusion prints it), then
    in parentheses the sample counts and, for FID / KID, the uncertainty's definition.
    """
    lines = []
    reasons = results.get("not_computed", {})
    for key, name in METRIC_NAMES:
        value = results.get(key)
        if value is None:
            lines.append(f"{name}: not computed ({reasons.get(key, 'not available')})")
            continue
        line = f"{name}: {value:.4f}"
        extra = []
        if key == "fid" and results.get("fid_bootstrap_sd") is not None:
            line += f" +/- {results['fid_bootstrap_sd']:.4f}"
            extra.append(f"bootstrap sd over {results.get('fid_bootstrap_rounds')} resamples of the samples")
        if key == "inception_score":
            n = results.get("num_sample_images")
            size = f"N = {n:,} samples" if n else ""
        else:
            size = _sizes(results, images_only=key in ("precision", "recall"))
        if size:
            extra.append(size)
        if extra:
            line += f" ({'; '.join(extra)})"
        lines.append(line)
    if "kid_mean" in results:  # absent from results of older callers
        if results.get("kid_mean") is None:
            lines.append(f"KID x10^3: not computed ({reasons.get('kid_mean', 'not available')})")
        else:
            extra = [f"mean +/- standard error over {results.get('kid_subsets')} subsets of "
                     f"{results.get('kid_subset_size')}", f"subset sd {results['kid_std'] * 1e3:.4f}"]
            size = _sizes(results)
            if size:
                extra.append(size)
            lines.append(f"KID x10^3: {results['kid_mean'] * 1e3:.4f} +/- {results['kid_se'] * 1e3:.4f} "
                         f"({'; '.join(extra)})")
    return "\n".join(lines)


def compute_statistics_file(images, out_path, inception_path=None, device=None,
                            batch_size=DEFAULT_BATCH_SIZE, progress=None):
    """Write ``mu, sigma, mu_s, sigma_s``, the pool_3 features and ``num_images`` of ``images`` to ``out_path``.

    ``images``: path, :class:`NpzBatch` or uint8 array. ``pool_3`` (N x 2048 float32, 8 KB per
    image) is what KID needs; the statistics alone suffice for FID / sFID.
    """
    batch = _resolve(images, "images")
    if not batch.has_images:
        raise EvaluatorInputError(f"{batch.path}: has no 'arr_0' images to compute statistics from; {SAVE_HINT}")
    if batch.num_images < 2:
        raise EvaluatorInputError(f"{batch.path}: holds 1 image; at least 2 are needed for a covariance")
    _check_writable(out_path, "--out")
    device = torch.device(device or default_device())
    net = _inception.load_inception(inception_path, device)
    acts = compute_activations(batch, net, batch_size, device, progress, want_spatial=True, want_logits=False)
    mu, sigma = _metrics.statistics(acts["pool"])
    mu_s, sigma_s = _metrics.statistics(acts["spatial"])
    pool = acts["pool"].astype(np.float32)
    n = np.int64(batch.num_images)
    _atomic_write(out_path, lambda f: np.savez(f, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s, pool_3=pool,
                                               num_images=n))
    return {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s, "pool_3": pool, "num_images": int(n)}


# ----------------------------------------------------------------------------------------------
# Output helpers
# ----------------------------------------------------------------------------------------------


def _check_writable(path, flag):
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise EvaluatorInputError(f"{path}: {flag} is a directory; give a file path")
    if not os.path.isdir(directory):
        raise EvaluatorInputError(f"{path}: directory {directory} for {flag} does not exist; create it first")
    if not os.access(directory, os.W_OK):
        raise EvaluatorInputError(f"{path}: directory {directory} for {flag} is not writable")


def _atomic_write(path, write_fn):
    """``write_fn(binary file)`` through :func:`guided_diffusion.io_util.atomic_write`."""
    with atomic_write(path, "wb") as f:
        write_fn(f)


def _json_ready(results):
    out = {}
    for k, v in results.items():
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        out[k] = v
    return out


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def build_parser():
    p = argparse.ArgumentParser(
        prog="evaluations/evaluator.py",
        description="FID, sFID, Inception Score, precision and recall of SAMPLE against REF with the TF "
        "Inception-v3 (2015-12-05) run in PyTorch, as guided-diffusion's evaluator defines them; plus KID "
        "(torch-fidelity's definition) and a bootstrap standard deviation for FID. See evaluations/README.md.",
    )
    p.add_argument("ref", nargs="?",
                   help="reference batch .npz (arr_0 uint8 NHWC images and/or mu, sigma[, mu_s, sigma_s])")
    p.add_argument("sample", nargs="?", help="sample batch .npz (same format)")
    p.add_argument("--ref_batch", help="reference batch .npz (same as the first positional argument)")
    p.add_argument("--sample_batch", help="sample batch .npz (same as the second positional argument)")
    p.add_argument("--json", metavar="PATH", help="also write the metrics to PATH as JSON (atomically)")
    p.add_argument("--stats", metavar="IMAGES.npz",
                   help="instead of evaluating, compute mu, sigma, mu_s, sigma_s, the pool_3 features (for KID) "
                   "and num_images of IMAGES.npz and write them to --out")
    p.add_argument("--out", metavar="STATS.npz", help="output file for --stats")
    p.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"images per Inception forward pass (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--pr_batch_size", type=int, default=5000,
                   help="block size of the precision/recall distance computation (default 5000)")
    add_settings(p, EvalConfig)  # --inception_path, --device, --fid_method, --fid_bootstrap, --kid_*, ...
    p.add_argument("--progress", dest="progress", action="store_true", default=True,
                   help="show progress bars on stderr (default)")
    p.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bars")
    return p


def _check_device(device):
    if device is None:
        return default_device()
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        raise EvaluatorInputError(f"--device {device}: not a torch device; use cpu or cuda") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise EvaluatorInputError(f"--device {device}: CUDA is not available here; use --device cpu")
    return str(d)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.pr_batch_size < 1:
        parser.error("--batch_size and --pr_batch_size must be positive")
    try:
        EvalConfig(**{k: getattr(args, k) for k in EvalConfig.KEY_FIELDS}).validate()
    except ValueError as e:
        parser.error(str(e))
    try:
        device = _check_device(args.eval_device)
        if args.stats is not None:
            if args.ref or args.sample or args.ref_batch or args.sample_batch:
                parser.error("--stats takes no reference/sample batches")
            if not args.out:
                parser.error("--stats needs --out STATS.npz")
            batch = open_batch(args.stats, "images")
            compute_statistics_file(batch, args.out, args.inception_path, device, args.batch_size, args.progress)
            print(f"wrote mu, sigma, mu_s, sigma_s and the pool_3 features of {batch.num_images} images to {args.out}")
            return 0
        if args.ref_batch and args.ref or args.sample_batch and args.sample:
            parser.error("give the batches either positionally or with --ref_batch/--sample_batch, not both")
        ref_path = args.ref_batch or args.ref
        sample_path = args.sample_batch or args.sample
        if not ref_path or not sample_path:
            parser.error("need a reference and a sample batch: evaluator.py REF.npz SAMPLE.npz")
        ref = open_batch(ref_path, "reference batch")
        sample = open_batch(sample_path, "sample batch")
        if args.json:
            _check_writable(args.json, "--json")
        results = evaluate(ref, sample, args.inception_path, device, args.batch_size, args.progress,
                           args.pr_batch_size, args.fid_method, kid_subsets=args.kid_subsets,
                           kid_subset_size=args.kid_subset_size, kid_seed=args.kid_seed,
                           fid_bootstrap=args.fid_bootstrap, bootstrap_seed=args.bootstrap_seed)
    except (EvaluatorInputError, _inception.InceptionWeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in results["notes"]:
        print(f"note: {note}", file=sys.stderr)
    for warning in results.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        payload = json.dumps(_json_ready(results), indent=2, sort_keys=True) + "\n"
        _atomic_write(args.json, lambda f: f.write(payload.encode()))
    print(format_results(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
