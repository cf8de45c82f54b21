"""Metric math for the evaluator: FID / sFID, Inception Score, improved precision & recall.

Definitions follow guided-diffusion's ``evaluations/evaluator.py`` (TF):

* statistics: ``mu = mean(acts)``, ``sigma = np.cov(acts, rowvar=False)`` (float64, N - 1);
* Frechet distance with ``scipy.linalg.sqrtm``; if the square root is not finite, ``eps * I``
  (eps = 1e-6) is added to both covariances; an imaginary residue is dropped when the imaginary
  part of the diagonal is within 1e-3 of zero, otherwise it is an error;
* Inception Score over consecutive splits of ``split_size`` = 5000 predictions (the last split may
  be shorter), the mean of ``exp(E_x KL(p(y|x) || p(y)))`` over splits;
* improved precision / recall (Kynkaanniemi et al. 2019) with k = 3: a point lies in a manifold
  when its squared distance to some point of the other set is <= that point's squared distance to
  its k-th nearest neighbour (itself excluded). Distances are computed block by block (torch), so
  an N x M matrix never exists in memory.
"""

import warnings

import numpy as np
import scipy.linalg
import torch

__all__ = [
    "statistics",
    "frechet_distance",
    "trace_sqrt_product_eigh",
    "inception_score",
    "softmax",
    "manifold_radii",
    "precision_recall",
]


# ----------------------------------------------------------------------------------------------
# Frechet distance
# ----------------------------------------------------------------------------------------------


def statistics(features, chunk_size=8192):
    """(mu, sigma) of (N, D) features in float64, as ``np.mean`` / ``np.cov(rowvar=False)``.

    The centred Gram matrix is accumulated over row chunks so that no float64 copy of the whole
    feature matrix is made.
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {x.shape}")
    n = x.shape[0]
    if n < 2:
        raise ValueError("at least 2 feature vectors are needed for a covariance")
    mu = np.zeros(x.shape[1], dtype=np.float64)
    for i in range(0, n, chunk_size):
        mu += x[i : i + chunk_size].astype(np.float64).sum(axis=0)
    mu /= n
    sigma = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
    for i in range(0, n, chunk_size):
        c = x[i : i + chunk_size].astype(np.float64) - mu
        sigma += c.T @ c
    sigma /= n - 1
    return mu, sigma


def _sqrtm(a):
    with warnings.catch_warnings():
        # scipy warns on (near-)singular input; finiteness is checked by the caller.
        warnings.simplefilter("ignore")
        return scipy.linalg.sqrtm(a)


def trace_sqrt_product_eigh(sigma1, sigma2):
    """tr((sigma1 sigma2)^(1/2)) for symmetric PSD inputs via two symmetric eigendecompositions.

    sigma1 sigma2 is similar to the PSD matrix A sigma2 A with A = sigma1^(1/2), so the trace of
    its principal square root is the sum of the square roots of that matrix's eigenvalues. Exact
    in exact arithmetic, real by construction and several times faster than ``sqrtm`` at D = 2048.
    """
    w, v = np.linalg.eigh(sigma1)
    a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = a @ sigma2 @ a
    ev = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6, imag_atol=1e-3, method="sqrtm"):
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``.

    ``method="sqrtm"`` (default) is guided-diffusion's computation; ``"eigh"`` uses
    :func:`trace_sqrt_product_eigh` (same quantity, faster; differs by round-off, and on singular
    products it does not need the ``eps`` offset).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(
            f"covariances have shapes {sigma1.shape} and {sigma2.shape}; expected {(mu1.shape[0],) * 2}"
        )
    diff = mu1 - mu2
    if method == "eigh":
        tr_covmean = trace_sqrt_product_eigh(sigma1, sigma2)
        return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    if method != "sqrtm":
        raise ValueError(f"unknown method {method!r}; use 'sqrtm' or 'eigh'")
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"FID: product of covariances is singular; adding {eps} to the diagonal of both",
            RuntimeWarning,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=imag_atol):
            m = np.max(np.abs(covmean.imag))
            raise ValueError(f"FID: matrix square root has an imaginary component {m}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


# ----------------------------------------------------------------------------------------------
# Inception Score
# ----------------------------------------------------------------------------------------------


def softmax(logits):
    """Row softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def inception_score(probs, split_size=5000):
    """Inception Score of class probabilities ``probs`` (N, K): mean over splits of size ``split_size``.

    As in guided-diffusion (and improved-GAN): ``exp(mean_x sum_y p log p - p log mean_x p)``;
    consecutive splits, a shorter last split included.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probs must be (N, K) with N >= 1, got {p.shape}")
    scores = []
    for i in range(0, len(p), split_size):
        part = p[i : i + split_size]
        marginal = part.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = part * (np.log(part) - np.log(marginal))
        kl = np.where(part > 0, kl, 0.0)  # 0 log 0 = 0
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))


# ----------------------------------------------------------------------------------------------
# Improved precision / recall
# ----------------------------------------------------------------------------------------------


def _as_tensor(x, device, dtype):
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), device=device, dtype=dtype)


def _sq_dists(a, a_sq, b, b_sq):
    """Squared Euclidean distances |a_i - b_j|^2 by the norm expansion, clipped at 0."""
    d = a_sq[:, None] - 2.0 * (a @ b.t()) + b_sq[None, :]
    return d.clamp_min_(0.0)


def manifold_radii(features, k=3, batch_size=5000, device="cpu", dtype=torch.float32):
    """Squared distance of every point to its k-th nearest neighbour in the same set (self excluded).

    Equivalent to guided-diffusion's ``np.partition(d, range(k + 1))[:, k]`` over full rows
    (index 0 being the point itself), computed block by block with a running top-(k+1).
    """
    x = _as_tensor(features, device, dtype)
    n = x.shape[0]
    if n <= k:
        raise ValueError(f"need more than k={k} points to estimate a manifold, got {n}")
    sq = (x * x).sum(1)
    radii = torch.empty(n, dtype=dtype, device=device)
    for i in range(0, n, batch_size):
        rows = x[i : i + batch_size]
        best = None
        for j in range(0, n, batch_size):
            d = _sq_dists(rows, sq[i : i + batch_size], x[j : j + batch_size], sq[j : j + batch_size])
            if best is not None:
                d = torch.cat([best, d], dim=1)
            best = torch.topk(d, min(k + 1, d.shape[1]), dim=1, largest=False).values
        radii[i : i + batch_size] = best[:, k]
    return radii


def _coverage(feat_a, radii_a, feat_b, radii_b, batch_size):
    """For each point of a: inside some ball of b?  For each point of b: inside some ball of a?"""
    a_in = torch.zeros(feat_a.shape[0], dtype=torch.bool, device=feat_a.device)
    b_in = torch.zeros(feat_b.shape[0], dtype=torch.bool, device=feat_b.device)
    a_sq = (feat_a * feat_a).sum(1)
    b_sq = (feat_b * feat_b).sum(1)
    for i in range(0, feat_a.shape[0], batch_size):
        for j in range(0, feat_b.shape[0], batch_size):
            d = _sq_dists(feat_a[i : i + batch_size], a_sq[i : i + batch_size],
                          feat_b[j : j + batch_size], b_sq[j : j + batch_size])
            a_in[i : i + batch_size] |= (d <= radii_b[None, j : j + batch_size]).any(dim=1)
            b_in[j : j + batch_size] |= (d <= radii_a[i : i + batch_size, None]).any(dim=0)
    return a_in, b_in


def precision_recall(ref_features, sample_features, k=3, batch_size=5000, device="cpu",
                     dtype=torch.float32):
    """Improved precision and recall (Kynkaanniemi et al., 2019) of samples against references.

    precision: fraction of samples inside the reference manifold;
    recall:    fraction of references inside the sample manifold.
    Distances are evaluated in ``batch_size`` x ``batch_size`` blocks on ``device``.
    """
    ref = _as_tensor(ref_features, device, dtype)
    sample = _as_tensor(sample_features, device, dtype)
    if ref.ndim != 2 or sample.ndim != 2 or ref.shape[1] != sample.shape[1]:
        raise ValueError(f"feature shapes {tuple(ref.shape)} and {tuple(sample.shape)} are incompatible")
    ref_radii = manifold_radii(ref, k, batch_size, device, dtype)
    sample_radii = manifold_radii(sample, k, batch_size, device, dtype)
    ref_in, sample_in = _coverage(ref, ref_radii, sample, sample_radii, batch_size)
    precision = sample_in.to(torch.float64).mean().item()
    recall = ref_in.to(torch.float64).mean().item()
    return float(precision), float(recall)
