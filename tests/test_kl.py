"""Tests for remap_jax.fit.kl: KL-divergence region weights."""

import numpy as np
import pytest

from remap_jax.fit import kl


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _synthetic_regions(num_landmarks=30, per_landmark=4, regions=6, channels=16, informative=(1, 4), seed=0):
    """Region descriptors where only `informative` regions depend on the landmark; the others are noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_landmarks), per_landmark)
    n = labels.size
    prototypes = rng.normal(size=(num_landmarks, regions, channels))
    desc = rng.normal(size=(n, regions, channels))
    for r in informative:
        desc[:, r] = prototypes[labels, r] + 0.3 * rng.normal(size=(n, channels))
    desc = _unit(desc)
    pos = np.array([(i, j) for i in range(n) for j in range(i + 1, n) if labels[i] == labels[j]])
    neg = kl.sample_negative_pairs(labels, num_pairs=3 * len(pos), seed=1)
    return desc, labels, pos, neg


def test_pair_distances_match_numpy():
    rng = np.random.default_rng(0)
    desc = _unit(rng.normal(size=(5, 3, 8)))
    pairs = np.array([[0, 1], [2, 4], [3, 3]])
    d = kl.pair_distances(desc, pairs, chunk=2)
    assert d.shape == (3, 3)
    np.testing.assert_allclose(d, np.linalg.norm(desc[pairs[:, 0]] - desc[pairs[:, 1]], axis=-1), atol=1e-6)
    assert np.all(d[2] == 0)
    assert d.max() <= 2.0


def test_sample_negative_pairs_have_different_labels_and_are_distinct():
    labels = np.array([0, 0, 1, 1, 2, 2, 3])
    pairs = kl.sample_negative_pairs(labels, num_pairs=15, seed=3)
    assert pairs.shape == (15, 2)
    assert np.all(labels[pairs[:, 0]] != labels[pairs[:, 1]])
    assert len({tuple(sorted(p)) for p in pairs.tolist()}) == 15
    np.testing.assert_array_equal(pairs, kl.sample_negative_pairs(labels, num_pairs=15, seed=3))
    with pytest.raises(ValueError, match="could only find"):
        kl.sample_negative_pairs(labels, num_pairs=100, seed=0)  # only 19 non-matching pairs exist
    with pytest.raises(ValueError, match="at least 2 different labels"):
        kl.sample_negative_pairs(np.zeros(5, int), num_pairs=1)


@pytest.mark.parametrize("estimator", ["histogram", "kde"])
def test_identical_distributions_give_zero(estimator):
    d = np.random.default_rng(0).uniform(0.3, 1.5, size=(200, 4))
    out = kl.kl_divergence(d, d.copy(), estimator=estimator)
    assert out.shape == (4,)
    np.testing.assert_allclose(out, 0.0, atol=1e-12)
    # Constant distances (a degenerate, zero-variance sample) are fine too.
    const = np.full(50, 0.7)
    assert float(kl.kl_divergence(const, const, estimator=estimator)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("estimator", ["histogram", "kde"])
def test_disjoint_distributions_are_finite_and_large(estimator):
    rng = np.random.default_rng(0)
    near = rng.uniform(0.0, 0.2, size=300)
    far = rng.uniform(1.6, 2.0, size=300)
    value = float(kl.kl_divergence(near, far, estimator=estimator))
    assert np.isfinite(value)  # empty bins / underflowed tails are smoothed
    assert value > 2.0
    same_dist = float(kl.kl_divergence(rng.uniform(0, 2, 300), rng.uniform(0, 2, 300), estimator=estimator))
    assert same_dist < 0.2 * value


def test_more_smoothing_shrinks_kl():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.6, 0.1, 200), rng.normal(1.2, 0.2, 200)
    values = [float(kl.kl_histogram(a, b, smoothing=s)) for s in (0.1, 1.0, 10.0)]
    assert values[0] > values[1] > values[2] > 0


def test_too_few_pairs_error_says_given_and_needed():
    d = np.linspace(0, 1, 20)
    with pytest.raises(ValueError, match=r"d_match: got 3 pairs, need at least 10"):
        kl.kl_histogram(d[:3], d)
    with pytest.raises(ValueError, match=r"d_nonmatch: got 5 pairs, need at least 8"):
        kl.kl_kde(d, d[:5], min_pairs=8)
    with pytest.raises(ValueError, match="smoothing"):
        kl.kl_histogram(d, d, smoothing=0.0)
    with pytest.raises(ValueError, match="estimator"):
        kl.kl_divergence(d, d, estimator="parzen")
    with pytest.raises(ValueError, match="NaN"):
        kl.kl_histogram(np.full(20, np.nan), d)


@pytest.mark.parametrize("estimator", ["histogram", "kde"])
def test_informative_regions_get_clearly_larger_weights(estimator):
    informative = (1, 4)
    desc, _, pos, neg = _synthetic_regions(informative=informative)
    # A second layer where only region 0 is informative.
    desc2, _, _, _ = _synthetic_regions(informative=(0,), seed=0)
    weights = kl.region_kl_weights({"layer4.1": desc, "layer4.2": desc2}, pos, neg, estimator=estimator,
                                   normalize="none")
    assert weights.shape == (2, 6)
    assert weights.dtype == np.float32
    assert np.all(weights >= 0)
    noise = [r for r in range(6) if r not in informative]
    assert weights[0, list(informative)].min() > 5 * weights[0, noise].max()
    assert weights[1, 0] > 5 * weights[1, 1:].max()


def test_normalization_modes_and_layer_order():
    desc, _, pos, neg = _synthetic_regions()
    raw = kl.region_kl_weights({"a": desc, "b": desc[:, ::-1]}, pos, neg, layers=("b", "a"), normalize="none")
    np.testing.assert_allclose(raw[0], raw[1][::-1], rtol=1e-6)  # rows follow `layers`
    mean = kl.region_kl_weights({"a": desc, "b": desc[:, ::-1]}, pos, neg, layers=("b", "a"))
    np.testing.assert_allclose(mean.mean(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(mean, raw / raw.mean(), rtol=1e-5)
    top = kl.normalize_weights(raw, "max")
    assert top.max() == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="falling back to alpha = 1"):
        np.testing.assert_array_equal(kl.normalize_weights(np.zeros((2, 3)), "mean"), np.ones((2, 3)))


def test_region_kl_weights_validates_inputs():
    desc, _, pos, neg = _synthetic_regions()
    with pytest.raises(ValueError, match="not in region_descriptors"):
        kl.region_kl_weights({"a": desc}, pos, neg, layers=("b",))
    with pytest.raises(ValueError, match="expected R=6"):
        kl.region_kl_weights({"a": desc, "b": desc[:, :3]}, pos, neg)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 120\)"):
        kl.region_kl_weights({"a": desc}, pos + 1000, neg)
    with pytest.raises(ValueError, match="rank 3"):
        kl.region_kl_weights({"a": desc[0]}, pos, neg)
    with pytest.raises(ValueError, match="got 2 pairs, need at least 10"):
        kl.region_kl_weights({"a": desc}, pos[:2], neg)


def test_weights_to_alpha_init():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    alpha = kl.weights_to_alpha_init(w, ("layer4.1", "layer4.2"))
    assert list(alpha) == ["layer4.1", "layer4.2"]
    np.testing.assert_array_equal(alpha["layer4.2"], [3, 4, 5])
    with pytest.raises(ValueError, match="expected shape"):
        kl.weights_to_alpha_init(w, ("only",))


def test_region_weight_maps_lay_out_by_scale():
    regions = np.array([[0, 0, 4, 4], [0, 0, 2, 2], [2, 2, 2, 2], [0, 2, 2, 2]])
    maps = kl.region_weight_maps(np.array([1.0, 2.0, 4.0, 6.0]), regions, 4, 4)
    assert [size for size, _ in maps] == [(4, 4), (2, 2)]
    np.testing.assert_array_equal(maps[0][1], np.ones((4, 4)))
    small = maps[1][1]
    assert small[0, 0] == 2.0 and small[3, 3] == 4.0 and small[0, 3] == 6.0
    assert np.isnan(small[3, 0])
