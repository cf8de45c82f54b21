"""Tests of evaluations/metrics.py: FID / sFID math, Inception Score, improved precision & recall."""

import warnings

import numpy as np
import pytest
import torch

from evaluations import metrics as M

METHODS = ["sqrtm", "eigh"]


# ---------------------------------------------------------------------------------------------
# statistics / FID
# ---------------------------------------------------------------------------------------------


def test_statistics_match_numpy_cov():
    x = np.random.RandomState(0).randn(103, 7).astype(np.float32) * 3 + 1
    mu, sigma = M.statistics(x, chunk_size=10)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64


def test_statistics_needs_two_rows():
    with pytest.raises(ValueError):
        M.statistics(np.zeros((1, 3)))


@pytest.mark.parametrize("method", METHODS)
def test_fid_identical_sets_is_zero(method):
    x = np.random.RandomState(1).randn(300, 16)
    mu, sigma = M.statistics(x)
    assert abs(M.frechet_distance(mu, sigma, mu, sigma, method=method)) < 1e-8


@pytest.mark.parametrize("method", METHODS)
def test_fid_diagonal_closed_form(method):
    rs = np.random.RandomState(2)
    mu1, mu2 = rs.randn(10), rs.randn(10)
    d1, d2 = rs.uniform(0.1, 3, 10), rs.uniform(0.1, 3, 10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(d1 + d2 - 2 * np.sqrt(d1 * d2))
    got = M.frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2), method=method)
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_fid_commuting_rotated_covariances(method):
    rs = np.random.RandomState(3)
    q, _ = np.linalg.qr(rs.randn(8, 8))
    a, b = rs.uniform(0.2, 2, 8), rs.uniform(0.2, 2, 8)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = np.sum(a + b - 2 * np.sqrt(a * b))
    got = M.frechet_distance(np.zeros(8), s1, np.zeros(8), s2, method=method)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_fid_non_commuting_2x2_closed_form(method):
    # For a 2x2 matrix with non-negative eigenvalues, tr(sqrt(M)) = sqrt(tr M + 2 sqrt(det M)).
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[1.0, -0.3], [-0.3, 0.5]])
    m = s1 @ s2
    tr_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    mu1, mu2 = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert M.frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-10)


def test_fid_singular_covariances_are_finite_and_methods_agree():
    # Fewer samples than dimensions: both covariances (and their product) are singular.
    rs = np.random.RandomState(4)
    x, y = rs.randn(5, 12), rs.randn(6, 12) + 0.5
    (m1, s1), (m2, s2) = M.statistics(x), M.statistics(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the eps-offset retry may warn
        a = M.frechet_distance(m1, s1, m2, s2, method="sqrtm")
    b = M.frechet_distance(m1, s1, m2, s2, method="eigh")
    assert np.isfinite(a) and np.isfinite(b)
    assert a == pytest.approx(b, rel=1e-4)


def test_fid_eps_offset_used_when_sqrtm_not_finite(monkeypatch):
    calls = []
    real = M._sqrtm

    def fake(a):
        calls.append(a.copy())
        if len(calls) == 1:
            return np.full_like(a, np.nan)
        return real(a)

    monkeypatch.setattr(M, "_sqrtm", fake)
    s = np.diag([1.0, 4.0])
    with pytest.warns(RuntimeWarning, match="singular"):
        d = M.frechet_distance(np.zeros(2), s, np.zeros(2), s, eps=1e-6)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], (s + 1e-6 * np.eye(2)) @ (s + 1e-6 * np.eye(2)))
    assert abs(d) < 1e-5


def test_fid_imaginary_residue(monkeypatch):
    s = np.diag([1.0, 4.0])
    root = np.diag([1.0, 4.0]).astype(np.complex128)
    monkeypatch.setattr(M, "_sqrtm", lambda a: root + 1e-9j)  # tiny residue: dropped
    assert M.frechet_distance(np.zeros(2), s, np.zeros(2), s) == pytest.approx(5 + 5 - 2 * 5)
    monkeypatch.setattr(M, "_sqrtm", lambda a: root + 0.1j * np.eye(2))  # large: error
    with pytest.raises(ValueError, match="imaginary"):
        M.frechet_distance(np.zeros(2), s, np.zeros(2), s)


def test_fid_shape_mismatch():
    with pytest.raises(ValueError):
        M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError):
        M.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="nope")


# ---------------------------------------------------------------------------------------------
# Inception Score
# ---------------------------------------------------------------------------------------------


def test_softmax_rows():
    z = np.array([[0.0, 0.0], [1000.0, 0.0], [1.0, 2.0]])
    p = M.softmax(z)
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(p[0], [0.5, 0.5])
    np.testing.assert_allclose(p[1], [1.0, 0.0])
    np.testing.assert_allclose(M.softmax(z + 7.0), p)


def test_inception_score_known_values():
    assert M.inception_score(np.full((10, 5), 0.2)) == pytest.approx(1.0)
    assert M.inception_score(np.eye(6)) == pytest.approx(6.0)
    # Two splits of 4: one confident over 4 classes (IS 4), one uniform (IS 1).
    probs = np.concatenate([np.eye(4), np.full((4, 4), 0.25)])
    assert M.inception_score(probs, split_size=4) == pytest.approx(2.5)
    # A shorter last split counts as a split of its own (guided-diffusion's loop).
    probs = np.concatenate([np.eye(4), np.eye(4)[:2]])
    assert M.inception_score(probs, split_size=4) == pytest.approx((4 + 2) / 2)


def test_inception_score_general_formula():
    rs = np.random.RandomState(5)
    p = M.softmax(rs.randn(50, 7) * 2)
    marg = p.mean(0)
    expected = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marg)), axis=1)))
    assert M.inception_score(p, split_size=5000) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# precision / recall
# ---------------------------------------------------------------------------------------------


def _brute_pr(ref, sample, k=3):
    def radii(x):
        d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        return np.partition(d, kth=list(range(k + 1)), axis=1)[:, k]

    rr, sr = radii(ref), radii(sample)
    d = ((ref[:, None, :] - sample[None, :, :]) ** 2).sum(-1)
    precision = np.mean((d <= rr[:, None]).any(axis=0))
    recall = np.mean((d <= sr[None, :]).any(axis=1))
    return precision, recall, rr, sr


def test_pr_identical_sets():
    x = np.random.RandomState(6).randn(40, 5)
    assert M.precision_recall(x, x) == (1.0, 1.0)


def test_pr_disjoint_far_clouds():
    rs = np.random.RandomState(7)
    ref = rs.randn(30, 4)
    sample = rs.randn(25, 4) + 100.0
    assert M.precision_recall(ref, sample) == (0.0, 0.0)


def test_pr_hand_computed_line():
    # k=3 radii of the reference points (non-squared): 0->3, 1->2, 2->2, 3->3 and 10..13 likewise.
    ref = np.array([0, 1, 2, 3, 10, 11, 12, 13], dtype=np.float64)[:, None]
    sample = np.array([5.5, 6.5, 20.0, 1.5], dtype=np.float64)[:, None]
    np.testing.assert_allclose(M.manifold_radii(ref).numpy(), np.array([3, 2, 2, 3, 3, 2, 2, 3]) ** 2)
    # 5.5 is within 3 of the point 3; 6.5 is 3.5 from both 3 and 10; 20 is far; 1.5 is inside.
    p, r = M.precision_recall(ref, sample)
    assert p == 0.5
    # Sample radii (k=3 among 4 points) are large (>= 13.5), so every reference is covered.
    assert r == 1.0
    # Swapping the roles swaps precision and recall.
    assert M.precision_recall(sample, ref) == (r, p)


def test_pr_subset_and_outliers():
    rs = np.random.RandomState(8)
    ref = rs.randn(20, 3)
    sample = np.concatenate([ref, rs.randn(5, 3) + 500.0])
    p, r = M.precision_recall(ref, sample)
    assert p == pytest.approx(20 / 25)
    assert r == 1.0


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_pr_blocked_matches_brute_force(batch_size):
    rs = np.random.RandomState(9)
    ref = rs.randn(53, 6)
    sample = rs.randn(41, 6) * 1.3 + 0.4
    p_exp, r_exp, rr, sr = _brute_pr(ref, sample)
    p, r = M.precision_recall(ref, sample, batch_size=batch_size, dtype=torch.float64)
    assert (p, r) == pytest.approx((p_exp, r_exp))
    assert 0 < p < 1 and 0 < r < 1  # a non-trivial case
    np.testing.assert_allclose(M.manifold_radii(ref, batch_size=batch_size, dtype=torch.float64).numpy(),
                               rr, rtol=1e-9)
    # float32 (the default) agrees on this data.
    assert M.precision_recall(ref.astype(np.float32), sample.astype(np.float32),
                              batch_size=batch_size) == pytest.approx((p_exp, r_exp))


def test_pr_needs_more_than_k_points():
    with pytest.raises(ValueError):
        M.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))


# ---------------------------------------------------------------------------------------------
# FID bootstrap / splits
# ---------------------------------------------------------------------------------------------


def _ref_stats(d=8, seed=20):
    return M.statistics(np.random.RandomState(seed).randn(4000, d))


@pytest.mark.parametrize("n,d,space", [(12, 16, None), (30, 8, None), (30, 8, "sample"), (7, 8, "feature")])
def test_bootstrap_point_fid_equals_frechet_eigh(n, d, space):
    mu_r, s_r = _ref_stats(d)
    x = np.random.RandomState(21).randn(n, d) * 1.3 + 0.2
    x_copy = x.copy()
    res = M.fid_bootstrap(x, mu_r, s_r, rounds=3, seed=0, space=space)
    mu, sigma = M.statistics(x)
    # n <= d: the sample covariance is singular; frechet_distance adds the square roots of its
    # round-off-level eigenvalues (~1e-8 each), the resampler counts them as zero.
    rel = 1e-9 if n > d else 1e-7
    assert res["fid"] == pytest.approx(M.frechet_distance(mu_r, s_r, mu, sigma, method="eigh"), rel=rel)
    assert res["space"] == (space or ("sample" if n <= 2 * d else "feature"))
    np.testing.assert_array_equal(x, x_copy)  # the caller's array is not touched


@pytest.mark.parametrize("space", ["sample", "feature"])
def test_bootstrap_values_are_fids_of_resampled_arrays(space):
    mu_r, s_r = _ref_stats(6)
    x = np.random.RandomState(22).randn(25, 6) + 0.1
    res = M.fid_bootstrap(x, mu_r, s_r, rounds=4, seed=9, space=space)
    rng = np.random.default_rng(9)
    for b in range(4):
        xb = x[rng.integers(0, 25, size=25)]
        mu, sigma = M.statistics(xb)
        expected = M.frechet_distance(mu_r, s_r, mu, sigma, method="eigh")
        assert res["values"][b] == pytest.approx(expected, rel=1e-9), b
    assert res["sd"] == pytest.approx(np.std(res["values"], ddof=1))


def test_bootstrap_seeded():
    mu_r, s_r = _ref_stats(5)
    x = np.random.RandomState(23).randn(40, 5)
    a = M.fid_bootstrap(x, mu_r, s_r, rounds=10, seed=1)
    b = M.fid_bootstrap(x, mu_r, s_r, rounds=10, seed=1)
    c = M.fid_bootstrap(x, mu_r, s_r, rounds=10, seed=2)
    np.testing.assert_array_equal(a["values"], b["values"])
    assert a["sd"] == b["sd"] and not np.array_equal(a["values"], c["values"])


def test_bootstrap_sd_shrinks_as_inverse_sqrt_n_and_matches_resampling_noise():
    """Synthetic Gaussians: sd(N) ~ 1/sqrt(N), and it estimates the spread of FID over fresh draws."""
    d = 8
    mu_r, s_r = np.zeros(d), np.eye(d)  # reference: N(0, I), known exactly
    rs = np.random.RandomState(24)

    def draw(n):
        return rs.randn(n, d) * 1.2 + 0.3

    sds = {n: M.fid_bootstrap(draw(n), mu_r, s_r, rounds=300, seed=0)["sd"] for n in (250, 1000)}
    ratio = sds[250] / sds[1000]
    assert 1.5 < ratio < 2.7, ratio  # 1/sqrt(N) predicts 2
    # The spread of FID over 150 independent 250-sample draws.
    fresh = []
    for _ in range(150):
        mu, sigma = M.statistics(draw(250))
        fresh.append(M.frechet_distance(mu_r, s_r, mu, sigma, method="eigh"))
    assert 0.67 < sds[250] / np.std(fresh, ddof=1) < 1.5


def test_bootstrap_needs_two_rounds_and_matching_shapes():
    mu_r, s_r = _ref_stats(4)
    x = np.random.RandomState(25).randn(10, 4)
    with pytest.raises(ValueError):
        M.fid_bootstrap(x, mu_r, s_r, rounds=1)
    with pytest.raises(ValueError):
        M.fid_bootstrap(x[:, :3], mu_r, s_r)
    with pytest.raises(ValueError):
        M.fid_bootstrap(x[:1], mu_r, s_r)


def test_fid_splits_are_fids_of_disjoint_shuffled_chunks():
    mu_r, s_r = _ref_stats(5)
    x = np.random.RandomState(26).randn(41, 5) + 0.2
    res = M.fid_splits(x, mu_r, s_r, num_splits=3, seed=4)
    perm = np.random.default_rng(4).permutation(41)
    assert res["split_size"] == 13 and len(res["values"]) == 3
    for k in range(3):
        mu, sigma = M.statistics(x[perm[k * 13 : (k + 1) * 13]])
        assert res["values"][k] == pytest.approx(M.frechet_distance(mu_r, s_r, mu, sigma, method="eigh"), rel=1e-9)
    assert res["mean"] == pytest.approx(res["values"].mean())
    assert res["sd"] == pytest.approx(np.std(res["values"], ddof=1))
    with pytest.raises(ValueError):
        M.fid_splits(x[:3], mu_r, s_r, num_splits=2)
    with pytest.raises(ValueError):
        M.fid_splits(x, mu_r, s_r, num_splits=1)
