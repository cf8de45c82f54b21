"""Tests of evaluations.metrics.kid: KID as torch-fidelity / clean-fid define it."""

import numpy as np
import pytest

from evaluations import metrics as M


def _k(u, v):
    """The KID kernel for two vectors, written out: (u . v / d + 1)^3."""
    return (sum(a * b for a, b in zip(u, v)) / len(u) + 1.0) ** 3


def _mmd2_loops(x, y):
    """Unbiased MMD^2 with plain Python loops over the pairs."""
    m = len(x)
    sxx = sum(_k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    syy = sum(_k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    sxy = sum(_k(x[i], y[j]) for i in range(m) for j in range(m))
    return sxx / (m * (m - 1)) + syy / (m * (m - 1)) - 2.0 * sxy / (m * m)


def _mmd2_matrix(x, y):
    """The same estimate from full kernel matrices (torch-fidelity's formula)."""
    d = x.shape[1]
    kxx, kyy, kxy = [(a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y))]
    m = len(x)
    return ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.sum() / m**2


def _naive_kid(x, y, num_subsets, subset_size, seed, mmd=_mmd2_loops):
    """Subsets drawn as torch-fidelity draws them: RandomState(seed).choice, set 1 then set 2."""
    m = min(subset_size, len(x), len(y))
    rng = np.random.RandomState(seed)
    vals = []
    for _ in range(num_subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        vals.append(mmd(a, b))
    return np.array(vals)


@pytest.fixture(scope="module")
def small():
    rs = np.random.RandomState(0)
    x = np.abs(rs.randn(23, 6)).astype(np.float32)  # non-negative, like pool_3 features
    y = (np.abs(rs.randn(31, 6)) * 1.3 + 0.1).astype(np.float32)
    return x, y


# subset size: neither set whole / set 1 whole / both whole (capped) ; several block sizes
@pytest.mark.parametrize("subset_size,block_size", [(9, 4), (9, 1000), (23, 5), (23, 2048), (1000, 7)])
def test_kid_matches_loop_mmd(small, subset_size, block_size):
    x, y = small
    r = M.kid(x, y, num_subsets=4, subset_size=subset_size, seed=3, block_size=block_size)
    ref = _naive_kid(x.astype(np.float64), y.astype(np.float64), 4, subset_size, 3)
    np.testing.assert_allclose(r["values"], ref, rtol=1e-10, atol=1e-12)
    assert r["mean"] == pytest.approx(ref.mean(), rel=1e-10, abs=1e-12)
    assert r["std"] == pytest.approx(ref.std(), rel=1e-8, abs=1e-12)
    assert r["se"] == pytest.approx(r["std"] / 2.0)
    assert r["subset_size"] == min(subset_size, 23) and r["num_subsets"] == 4


def test_kid_set_2_whole(small):
    """The other shortcut: the second set is used whole, the first is subsampled."""
    x, y = small
    y = y[:12]
    r = M.kid(x, y, num_subsets=3, subset_size=12, seed=5, block_size=5)
    ref = _naive_kid(x.astype(np.float64), y.astype(np.float64), 3, 12, 5, mmd=_mmd2_matrix)
    np.testing.assert_allclose(r["values"], ref, rtol=1e-10)


def test_kid_explicit_matrix_formula_larger():
    rs = np.random.RandomState(1)
    x, y = rs.rand(300, 32), rs.rand(250, 32) + 0.05
    r = M.kid(x, y, num_subsets=6, subset_size=100, seed=0, block_size=37)
    np.testing.assert_allclose(r["values"], _naive_kid(x, y, 6, 100, 0, mmd=_mmd2_matrix), rtol=1e-9)


def test_kid_float64_arithmetic_on_float32_input(small):
    x, y = small
    a = M.kid(x, y, num_subsets=3, subset_size=10, seed=0)
    b = M.kid(x.astype(np.float64), y.astype(np.float64), num_subsets=3, subset_size=10, seed=0)
    np.testing.assert_array_equal(a["values"], b["values"])


def test_kid_same_distribution_near_zero_shift_positive():
    rs = np.random.RandomState(2)
    d = 16
    x = rs.randn(600, d)
    y_same = rs.randn(600, d)
    y_shift = rs.randn(600, d) + 0.5
    same = M.kid(x, y_same, num_subsets=20, subset_size=200, seed=0)
    shift = M.kid(x, y_shift, num_subsets=20, subset_size=200, seed=0)
    assert shift["mean"] > 0 and shift["mean"] > 10 * shift["se"]
    assert abs(same["mean"]) < 0.05 * shift["mean"]
    assert abs(same["mean"]) < 4 * same["std"]  # unbiased: centred on 0 up to the subset noise


def test_kid_identical_sets_whole():
    """A set against itself, both used whole: every subset is the same (sd 0), the value is the
    matrix formula's (not exactly 0: the cross term includes the diagonal) and tiny next to a shift."""
    x = np.random.RandomState(4).rand(50, 8)
    r = M.kid(x, x, num_subsets=5, subset_size=1000, seed=0)
    assert r["subset_size"] == 50 and r["std"] == 0.0
    assert np.all(r["values"] == r["values"][0])
    assert r["mean"] == pytest.approx(_mmd2_matrix(x, x), rel=1e-10)
    shifted = M.kid(x, x + 0.3, num_subsets=5, subset_size=1000, seed=0)
    assert abs(r["mean"]) < 0.05 * shifted["mean"]


def test_kid_subset_size_capped_at_smaller_set():
    rs = np.random.RandomState(5)
    x, y = rs.rand(40, 4), rs.rand(90, 4)
    r = M.kid(x, y)  # defaults: 100 subsets of 1000, capped to 40
    assert r["subset_size"] == 40 and r["num_subsets"] == 100 and r["seed"] == M.KID_SEED
    assert (r["n1"], r["n2"]) == (40, 90)
    assert r["std"] > 0  # set 2 is subsampled, so subsets differ
    np.testing.assert_allclose(r["values"][:3], _naive_kid(x, y, 3, 1000, M.KID_SEED, mmd=_mmd2_matrix),
                               rtol=1e-10)


def test_kid_seeded():
    rs = np.random.RandomState(6)
    x, y = rs.rand(60, 5), rs.rand(70, 5)
    a = M.kid(x, y, num_subsets=5, subset_size=20, seed=11)
    b = M.kid(x, y, num_subsets=5, subset_size=20, seed=11)
    c = M.kid(x, y, num_subsets=5, subset_size=20, seed=12)
    np.testing.assert_array_equal(a["values"], b["values"])
    assert not np.array_equal(a["values"], c["values"])


def test_kid_defaults_are_torch_fidelitys():
    assert (M.KID_SUBSETS, M.KID_SUBSET_SIZE, M.KID_SEED) == (100, 1000, 2020)


@pytest.mark.parametrize("kwargs", [dict(subset_size=1), dict(num_subsets=0)])
def test_kid_bad_arguments(kwargs):
    x = np.random.RandomState(7).rand(10, 3)
    with pytest.raises(ValueError):
        M.kid(x, x, **kwargs)


def test_kid_bad_shapes():
    rs = np.random.RandomState(8)
    with pytest.raises(ValueError):
        M.kid(rs.rand(10, 3), rs.rand(10, 4))
    with pytest.raises(ValueError):
        M.kid(rs.rand(1, 3), rs.rand(10, 3))
    with pytest.raises(ValueError):
        M.kid(rs.rand(10), rs.rand(10))
