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

Additions that are not in guided-diffusion's evaluator:

* KID (Binkowski et al. 2018) as torch-fidelity / clean-fid define it: polynomial kernel
  ``k(x, y) = (x . y / d + 1)^3``, the unbiased MMD^2 estimate on random subsets of equal size
  (default 1000, capped at the smaller set), averaged over 100 subsets; seeded (default 2020, the
  seed torch-fidelity uses), float64, blocked. :func:`kid`.
* An uncertainty for FID: a bootstrap over the sample features against fixed reference statistics
  (:func:`fid_bootstrap`), and the FIDs of disjoint random chunks of the samples
  (:func:`fid_splits`). Both use the eigendecomposition route of :func:`trace_sqrt_product_eigh`.
"""

import sys
import warnings

import numpy as np
import scipy.linalg
import scipy.linalg.blas as _blas
import torch

from guided_diffusion.settings import EvalConfig as _EvalConfig

__all__ = [
    "statistics",
    "frechet_distance",
    "trace_sqrt_product_eigh",
    "inception_score",
    "softmax",
    "manifold_radii",
    "precision_recall",
    "kid",
    "fid_bootstrap",
    "fid_splits",
    "KID_SUBSETS",
    "KID_SUBSET_SIZE",
    "KID_SEED",
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


# ----------------------------------------------------------------------------------------------
# KID (kernel inception distance)
# ----------------------------------------------------------------------------------------------

# Declared with the evaluator's other options in guided_diffusion.settings.EvalConfig.
KID_SUBSETS = _EvalConfig.kid_subsets  # 100: torch-fidelity's kid_subsets (clean-fid: num_subsets=100)
KID_SUBSET_SIZE = _EvalConfig.kid_subset_size  # 1000: torch-fidelity's kid_subset_size (clean-fid: max_subset_size)
KID_SEED = _EvalConfig.kid_seed  # 2020: torch-fidelity's default rng_seed


def _poly_kernel(a, b, d):
    """(a b^T / d + 1)^3 for float64 row blocks a, b."""
    k = a @ b.T
    k *= 1.0 / d
    k += 1.0
    out = k * k
    out *= k
    return out


def _poly_offdiag_sum(a, block_size):
    """sum_{i != j} (a_i . a_j / d + 1)^3 over the rows of ``a``, in float64, blocked.

    Only blocks on or above the block diagonal are computed; a diagonal block uses the symmetric
    rank-k product (BLAS syrk) and only its strict upper triangle is summed.
    """
    n, d = a.shape
    total = 0.0
    for i in range(0, n, block_size):
        ai = np.asarray(a[i : i + block_size], dtype=np.float64)
        b = ai.shape[0]
        g = _blas.dsyrk(1.0 / d, ai.T, trans=1)  # ai ai^T / d, upper triangle valid
        k = np.triu(g, 1)
        k += 1.0
        cube = k * k
        cube *= k
        # Entries on and below the diagonal of ``k`` are exactly 1 and contribute 1 each.
        total += 2.0 * (cube.sum() - b * (b + 1) / 2.0)
        for j in range(i + block_size, n, block_size):
            aj = np.asarray(a[j : j + block_size], dtype=np.float64)
            total += 2.0 * _poly_kernel(ai, aj, d).sum()
    return total


def _poly_col_sums(a, b, block_size):
    """r_j = sum_i (a_i . b_j / d + 1)^3 for every row j of ``b``, in float64, blocked."""
    d = a.shape[1]
    out = np.zeros(b.shape[0], dtype=np.float64)
    for j in range(0, b.shape[0], block_size):
        bj = np.asarray(b[j : j + block_size], dtype=np.float64)
        for i in range(0, a.shape[0], block_size):
            ai = np.asarray(a[i : i + block_size], dtype=np.float64)
            out[j : j + block_size] += _poly_kernel(ai, bj, d).sum(axis=0)
    return out


def kid(features_1, features_2, num_subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=KID_SEED,
        block_size=2048, progress=False):
    """Kernel Inception Distance of two feature sets (N1, d) and (N2, d), as torch-fidelity defines it.

    For each of ``num_subsets`` subsets, ``m = min(subset_size, N1, N2)`` rows are drawn without
    replacement from each set (``np.random.RandomState(seed).choice``, set 1 then set 2, as
    torch-fidelity does, so equal seeds give equal subsets) and the unbiased MMD^2 with the kernel
    ``k(x, y) = (x . y / d + 1)^3`` is computed::

        sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
            - 2 sum_{i, j} k(x_i, y_j) / m^2

    Unlike torch-fidelity (which stops when a set is smaller than ``subset_size``), the subset size
    is capped at the smaller set, as clean-fid does. All sums are in float64 over ``block_size``
    row blocks. A set used whole (``m`` equals its size) gives the same within-set sum in every
    subset (the estimate does not depend on row order), so that sum, and its kernel sums against
    every row of the other set, are computed once.

    Returns a dict: ``mean`` (KID), ``std`` (population standard deviation of the subset
    estimates, as torch-fidelity's ``kernel_inception_distance_std``), ``se`` (``std /
    sqrt(num_subsets)``: the Monte-Carlo error of ``mean`` due to the choice of subsets), ``values``
    (the per-subset estimates), ``subset_size`` (``m``), ``num_subsets``, ``seed``, ``n1``, ``n2``.
    """
    f1 = np.asarray(features_1)
    f2 = np.asarray(features_2)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature shapes {f1.shape} and {f2.shape} are incompatible; need (N1, d), (N2, d)")
    if num_subsets < 1 or subset_size < 2 or block_size < 1:
        raise ValueError("num_subsets must be >= 1, subset_size >= 2 and block_size >= 1")
    n1, n2 = f1.shape[0], f2.shape[0]
    m = min(int(subset_size), n1, n2)
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature vectors per set, got {n1} and {n2}")
    whole1, whole2 = m == n1, m == n2
    xx = _poly_offdiag_sum(f1, block_size) if whole1 else None
    yy = _poly_offdiag_sum(f2, block_size) if whole2 else None
    if whole1 and whole2:
        xy_total = float(_poly_col_sums(f1, f2, block_size).sum())
    elif whole1:
        per_row_2 = _poly_col_sums(f1, f2, block_size)  # kernel sums of each row of set 2 vs all of set 1
    elif whole2:
        per_row_1 = _poly_col_sums(f2, f1, block_size)

    rng = np.random.RandomState(seed)
    values = np.empty(num_subsets, dtype=np.float64)
    iterator = range(num_subsets)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="KID subsets", unit="subset", file=sys.stderr, leave=False)
    for s in iterator:
        i1 = rng.choice(n1, m, replace=False)
        i2 = rng.choice(n2, m, replace=False)
        sxx = xx if whole1 else _poly_offdiag_sum(f1[i1], block_size)
        syy = yy if whole2 else _poly_offdiag_sum(f2[i2], block_size)
        if whole1 and whole2:
            sxy = xy_total
        elif whole1:
            sxy = per_row_2[i2].sum()
        elif whole2:
            sxy = per_row_1[i1].sum()
        else:
            sxy = _poly_col_sums(f1[i1], f2[i2], block_size).sum()
        values[s] = (sxx + syy) / (m * (m - 1)) - 2.0 * sxy / (m * m)
    # Both sets whole: every subset gives the same number (the spread would be round-off only).
    std = 0.0 if (whole1 and whole2) else float(values.std())
    return {
        "mean": float(values.mean()),
        "std": std,
        "se": std / float(np.sqrt(num_subsets)),
        "values": values,
        "subset_size": m,
        "num_subsets": int(num_subsets),
        "seed": seed,
        "n1": n1,
        "n2": n2,
    }


# ----------------------------------------------------------------------------------------------
# FID uncertainty: bootstrap over samples, disjoint splits
# ----------------------------------------------------------------------------------------------


class _FrechetResampler:
    """FID of re-weighted copies of fixed sample features against fixed reference statistics.

    A resample is given by integer counts ``c`` (length N, sum n): its mean is ``sum c_i x_i / n``
    and its covariance ``sum c_i (x_i - m)(x_i - m)^T / (n - 1)`` -- exactly ``np.mean`` /
    ``np.cov`` of the array with row i repeated c_i times. ``tr((sigma_ref sigma_b)^(1/2))`` is the
    sum of the square roots of the eigenvalues of ``A sigma_b A`` (``A = sigma_ref^(1/2)``), as in
    :func:`trace_sqrt_product_eigh`. Two equivalent routes to those eigenvalues:

    * "sample" (N <= 2 d): ``A sigma_b A = Z^T Z`` with ``Z`` having one row per distinct sample, so
      its non-zero eigenvalues are those of ``Z Z^T`` (k x k, k = distinct samples), which is built
      from ``G = X0 sigma_ref X0^T`` (computed once) in O(k^2): one k x k eigendecomposition per
      resample and no d x d work at all;
    * "feature" (N > 2 d): ``Y = X0 A`` once, then per resample the weighted covariance of ``Y``
      (O(k d^2)) and one d x d symmetric eigendecomposition.

    Linear algebra runs in float64 with torch on ``device``.
    """

    def __init__(self, features, mu_ref, sigma_ref, device="cpu", space=None, chunk_size=8192):
        x = np.asarray(features)
        mu_ref = np.asarray(mu_ref, dtype=np.float64)
        sigma_ref = np.asarray(sigma_ref, dtype=np.float64)
        if x.ndim != 2 or mu_ref.shape != (x.shape[1],) or sigma_ref.shape != (x.shape[1],) * 2:
            raise ValueError(f"features {x.shape}, mu {mu_ref.shape} and sigma {sigma_ref.shape} are incompatible")
        n, d = x.shape
        if n < 2:
            raise ValueError("at least 2 sample feature vectors are needed")
        self.n, self.d, self.chunk = n, d, chunk_size
        self.device = torch.device(device)
        t = lambda a: torch.as_tensor(a, dtype=torch.float64, device=self.device)  # noqa: E731
        self.x0 = torch.tensor(x, dtype=torch.float64, device=self.device)  # a copy: centred in place
        xbar = self.x0.mean(0)
        self.x0 -= xbar
        self.sq = (self.x0 * self.x0).sum(1)
        self.delta = xbar - t(mu_ref)
        sig = t(sigma_ref)
        self.tr_ref = float(torch.trace(sig))
        self.space = space or ("sample" if n <= 2 * d else "feature")
        if self.space == "sample":
            g = (self.x0 @ sig) @ self.x0.T
            self.gram = (g + g.T) / 2.0
        elif self.space == "feature":
            w, v = torch.linalg.eigh(sig)
            a = (v * w.clamp_min(0.0).sqrt()) @ v.T
            self.y = torch.empty_like(self.x0)
            for i in range(0, n, chunk_size):
                self.y[i : i + chunk_size] = self.x0[i : i + chunk_size] @ a
        else:
            raise ValueError(f"unknown space {space!r}")

    def fid(self, counts):
        c = torch.as_tensor(np.asarray(counts, dtype=np.float64), device=self.device)
        n = float(c.sum())
        if n < 2:
            raise ValueError("a resample needs at least 2 samples")
        w = c / n
        mx = self.x0.T @ w  # resample mean minus the full-sample mean
        mean_term = float(((self.delta + mx) ** 2).sum())
        tr_b = (float(c @ self.sq) - n * float(mx @ mx)) / (n - 1.0)
        sup = torch.nonzero(c).squeeze(1)
        cs = c[sup]
        if self.space == "sample":
            gs = self.gram.index_select(0, sup).index_select(1, sup)
            g = gs @ (cs / n)
            m = gs - g[:, None] - g[None, :] + (g @ (cs / n))
            r = cs.sqrt()
            m *= r[:, None] * r[None, :] / (n - 1.0)
        else:
            my = self.y.T @ w
            m = torch.zeros((self.d, self.d), dtype=torch.float64, device=self.device)
            for i in range(0, sup.numel(), self.chunk):
                idx = sup[i : i + self.chunk]
                yc = self.y.index_select(0, idx)
                m += (yc * c[idx, None]).T @ yc
            m -= n * torch.outer(my, my)
            m /= n - 1.0
        ev = torch.linalg.eigvalsh((m + m.T) / 2.0)
        # Eigenvalues at round-off level (the matrix has rank <= min(k - 1, d)) count as zero;
        # their square roots would otherwise add up to a visible bias.
        tol = float(ev.abs().max()) * ev.numel() * np.finfo(np.float64).eps
        tr_sqrt = float(torch.where(ev > tol, ev, torch.zeros_like(ev)).sqrt().sum())
        return mean_term + self.tr_ref + tr_b - 2.0 * tr_sqrt


def fid_bootstrap(sample_features, mu_ref, sigma_ref, rounds=200, seed=0, device="cpu", progress=False,
                  space=None):
    """Bootstrap spread of FID over the samples, the reference statistics held fixed.

    Each round draws N sample feature vectors with replacement (``np.random.default_rng(seed)``)
    and computes the FID of the resample against ``(mu_ref, sigma_ref)`` by the eigendecomposition
    route (see :class:`_FrechetResampler`; round-off-level equal to ``frechet_distance(...,
    method="eigh")`` on the resampled array).

    ``sd`` (standard deviation over rounds, ddof=1) estimates the sampling noise of FID that comes
    from drawing N samples: how much the FID of another N-sample run of the same model would
    differ. It does not include the reference side's noise, and the bootstrap values themselves are
    biased upward (a resample has ~0.63 N distinct points) -- only their spread is used.

    Returns a dict: ``fid`` (point FID of all samples, eigh route), ``sd``, ``values`` (per round),
    ``rounds``, ``seed``, ``num_samples``, ``space``.
    """
    if rounds < 2:
        raise ValueError("the bootstrap needs at least 2 rounds")
    res = _FrechetResampler(sample_features, mu_ref, sigma_ref, device=device, space=space)
    n = res.n
    point = res.fid(np.ones(n))
    rng = np.random.default_rng(seed)
    values = np.empty(rounds, dtype=np.float64)
    iterator = range(rounds)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="FID bootstrap", unit="round", file=sys.stderr, leave=False)
    for b in iterator:
        counts = np.bincount(rng.integers(0, n, size=n), minlength=n)
        values[b] = res.fid(counts)
    return {"fid": point, "sd": float(values.std(ddof=1)), "values": values, "rounds": int(rounds),
            "seed": seed, "num_samples": n, "space": res.space}


def fid_splits(sample_features, mu_ref, sigma_ref, num_splits=2, seed=0, device="cpu", space=None):
    """FIDs of ``num_splits`` disjoint random chunks of the samples against fixed reference statistics.

    The samples are shuffled (``np.random.default_rng(seed).permutation``, so class-ordered sample
    files are mixed) and cut into ``num_splits`` chunks of ``N // num_splits`` (a remainder is left
    out). Each chunk's FID is that of ``N / num_splits`` samples, so it is biased upward relative to
    the FID of all N; the spread of the chunk FIDs is the sampling noise at that smaller size.

    Returns a dict: ``values`` (one FID per chunk), ``mean``, ``sd`` (ddof=1), ``split_size``,
    ``num_splits``, ``seed``.
    """
    res = _FrechetResampler(sample_features, mu_ref, sigma_ref, device=device, space=space)
    size = res.n // int(num_splits)
    if num_splits < 2 or size < 2:
        raise ValueError(f"need num_splits >= 2 chunks of at least 2 samples; got {res.n} samples, "
                         f"{num_splits} splits")
    perm = np.random.default_rng(seed).permutation(res.n)
    values = []
    for k in range(num_splits):
        counts = np.zeros(res.n)
        counts[perm[k * size : (k + 1) * size]] = 1.0
        values.append(res.fid(counts))
    values = np.array(values)
    return {"values": values, "mean": float(values.mean()), "sd": float(values.std(ddof=1)),
            "split_size": size, "num_splits": int(num_splits), "seed": seed}
