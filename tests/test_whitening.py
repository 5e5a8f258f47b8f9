"""Tests for remap_jax.fit.whitening: PCA-whitening and learned whitening (Lw)."""

import numpy as np
import pytest

from remap_jax.fit import whitening


def _correlated(n=400, d=12, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * np.linspace(3.0, 0.1, d)[None, :]
    return rng.normal(size=(n, d)) @ mix.T + rng.normal(size=d)


def _cov(y):
    yc = y - y.mean(0)
    return yc.T @ yc / y.shape[0]


def test_pca_whitening_gives_identity_covariance():
    x = _correlated()
    w, b = whitening.pca_whitening(x)
    assert w.shape == (12, 12) and b.shape == (12,)
    assert w.dtype == np.float32 and b.dtype == np.float32
    y = x @ w.T.astype(np.float64) + b
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-3)  # b centres the training data
    np.testing.assert_allclose(_cov(y), np.eye(12), atol=1e-3)


def test_pca_whitening_reduces_dimension_keeping_top_components():
    x = _correlated()
    w_full, _ = whitening.pca_whitening(x, power=0.0)
    w4, b4 = whitening.pca_whitening(x, dim=4)
    assert w4.shape == (4, 12) and b4.shape == (4,)
    y = x @ w4.T.astype(np.float64) + b4
    np.testing.assert_allclose(_cov(y), np.eye(4), atol=1e-3)
    # power=0 is a rotation: the variances along its rows are the eigenvalues, decreasing.
    var = np.diag(_cov(x @ w_full.T.astype(np.float64)))
    assert np.all(np.diff(var) <= 1e-6)
    total = np.trace(_cov(x))
    assert var[:4].sum() > 0.8 * total  # the top directions carry most variance


def test_pca_whitening_shrinkage_power():
    x = _correlated()
    vals_rot = np.diag(_cov(x @ whitening.pca_whitening(x, power=0.0)[0].T.astype(np.float64)))
    w_half, _ = whitening.pca_whitening(x, power=0.5)
    var_half = np.diag(_cov(x @ w_half.T.astype(np.float64)))
    # lambda^(-1/2) scaling of a variance lambda leaves sqrt(lambda): shrunk, not flattened.
    np.testing.assert_allclose(var_half, np.sqrt(vals_rot), rtol=1e-3)
    with pytest.raises(ValueError, match="power"):
        whitening.pca_whitening(x, power=1.5)


def test_pca_whitening_rank_and_shape_errors():
    x = _correlated(n=5, d=12)
    with pytest.raises(ValueError, match="rank 4"):
        whitening.pca_whitening(x)  # 5 samples -> covariance rank 4
    w, _ = whitening.pca_whitening(x, dim=4)
    assert w.shape == (4, 12)
    with pytest.raises(ValueError, match="rank 2"):
        whitening.pca_whitening(x[0])
    with pytest.raises(ValueError, match="1 <= dim <= 12"):
        whitening.pca_whitening(_correlated(), dim=13)
    with pytest.raises(ValueError, match="NaN"):
        whitening.pca_whitening(np.full((4, 3), np.nan))


def _pairs_data(n_classes=60, per_class=5, d=10, seed=0):
    """Class centres spread in all directions; within-class (nuisance) noise is strong in a 3-d subspace."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, d)) * np.linspace(2.0, 0.2, d)
    noise_mix = np.diag(np.r_[np.full(3, 3.0), np.full(d - 3, 0.3)]) @ rng.normal(size=(d, d))
    labels = np.repeat(np.arange(n_classes), per_class)
    x = centres[labels] + rng.normal(size=(labels.size, d)) @ noise_mix.T
    qidx, pidx = [], []
    for c in range(n_classes):
        members = np.flatnonzero(labels == c)
        for i in range(1, per_class):
            qidx.append(members[0])
            pidx.append(members[i])
    return x, np.array(qidx), np.array(pidx), labels


def test_learned_whitening_properties():
    x, qidx, pidx, _ = _pairs_data()
    w, b = whitening.learned_whitening(x, qidx, pidx)
    assert w.shape == (10, 10) and b.shape == (10,)
    w64 = w.astype(np.float64)
    # 1) matching-pair differences have identity second moment after the projection.
    diff = (x[qidx] - x[pidx]) @ w64.T
    np.testing.assert_allclose(diff.T @ diff / diff.shape[0], np.eye(10), atol=1e-3)
    # 2) the projected training descriptors have a diagonal covariance with decreasing variances.
    cov = _cov(x @ w64.T + b)
    off = cov - np.diag(np.diag(cov))
    assert np.abs(off).max() < 1e-3 * np.abs(np.diag(cov)).max()
    assert np.all(np.diff(np.diag(cov)) <= 1e-6)
    # 3) b centres on the mean of the query descriptors.
    np.testing.assert_allclose((x[qidx] @ w64.T + b).mean(0), 0.0, atol=1e-3)


def test_learned_whitening_reduction_keeps_the_property_and_separates_classes():
    x, qidx, pidx, labels = _pairs_data()
    w, b = whitening.learned_whitening(x, qidx, pidx, dim=3)
    assert w.shape == (3, 10)
    diff = (x[qidx] - x[pidx]) @ w.T.astype(np.float64)
    np.testing.assert_allclose(diff.T @ diff / diff.shape[0], np.eye(3), atol=1e-3)
    # Lw suppresses the nuisance directions: nearest-neighbour retrieval in its 3-d space beats the raw
    # 10-d space and unsupervised PCA-whitening reduced to 3-d (which keeps the high-variance nuisance).
    def nn_accuracy(y):
        dist = ((y[:, None] - y[None]) ** 2).sum(-1)
        np.fill_diagonal(dist, np.inf)
        return np.mean(labels[dist.argmin(1)] == labels)
    lw = nn_accuracy(whitening.apply_whitening(x, w, b, normalize=False))
    pca = nn_accuracy(whitening.apply_whitening(x, *whitening.pca_whitening(x, dim=3), normalize=False))
    assert lw > 0.3
    assert lw > 3 * pca and lw > 5 * nn_accuracy(x)


def test_learned_whitening_input_errors():
    x, qidx, pidx, _ = _pairs_data()
    with pytest.raises(ValueError, match="equal length"):
        whitening.learned_whitening(x, qidx, pidx[:-1])
    with pytest.raises(ValueError, match=r"pidx: expected integer indices in \[0, 300\)"):
        whitening.learned_whitening(x, qidx, pidx + 1000)
    with pytest.raises(ValueError, match="at least 2 matching pairs"):
        whitening.learned_whitening(x, qidx[:1], pidx[:1])


def test_learned_whitening_with_fewer_pairs_than_dimensions():
    x, qidx, pidx, _ = _pairs_data()
    w, b = whitening.learned_whitening(x, qidx[:4], pidx[:4], dim=3)  # S has rank 4 < 10: jitter
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(b))
    w_jitter, _ = whitening.learned_whitening(x, qidx[:4], pidx[:4])
    w_ridge, _ = whitening.learned_whitening(x, qidx[:4], pidx[:4], ridge=0.01)
    # The ridge bounds the gain of directions the few pairs never varied in.
    assert np.linalg.norm(w_ridge, 2) < 1e-2 * np.linalg.norm(w_jitter, 2)
    with pytest.raises(ValueError, match="ridge"):
        whitening.learned_whitening(x, qidx, pidx, ridge=-1.0)


def test_pca_whitening_ridge_allows_rank_deficient_data():
    x = _correlated(n=5, d=12)
    w, b = whitening.pca_whitening(x, ridge=0.1)  # 12 > rank 4, fine with a ridge
    assert w.shape == (12, 12) and np.all(np.isfinite(w))
    y = x @ w.T.astype(np.float64) + b
    var = np.diag(_cov(y))
    assert np.all(var[:4] > 0.5) and np.all(var[:4] < 1.0)  # shrunk slightly below 1 by the ridge
    np.testing.assert_allclose(var[4:], 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="ridge"):
        whitening.pca_whitening(x, ridge=-1.0)


def test_apply_whitening_matches_head_convention():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5)).astype(np.float32)
    w = rng.normal(size=(3, 5)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    y = whitening.apply_whitening(x, w, b, normalize=False)
    np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-5)
    yn = whitening.apply_whitening(x, w, b)
    np.testing.assert_allclose(np.linalg.norm(yn, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="expected"):
        whitening.apply_whitening(x, w.T, b)
