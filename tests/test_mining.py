"""Hard-negative mining: epoch sampling, on-device top-k of other-landmark candidates, negative selection."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from remap_jax.fit import mining


def _data(seed=0, q=6, p=40, d=16, labels=8):
    rng = np.random.default_rng(seed)
    qd = rng.normal(size=(q, d)).astype(np.float32)
    pd = rng.normal(size=(p, d)).astype(np.float32)
    qd /= np.linalg.norm(qd, axis=1, keepdims=True)
    pd /= np.linalg.norm(pd, axis=1, keepdims=True)
    return qd, pd, rng.integers(0, labels, q), rng.integers(0, labels, p)


def _brute_force(qd, pd, ql, pl, k):
    sims = qd @ pd.T
    sims[ql[:, None] == pl[None, :]] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


def test_sample_epoch_is_deterministic_and_clipped():
    a = mining.sample_epoch(0, 3, num_pairs=50, num_images=100, queries_per_epoch=20, pool_size=30)
    b = mining.sample_epoch(0, 3, num_pairs=50, num_images=100, queries_per_epoch=20, pool_size=30)
    c = mining.sample_epoch(0, 4, num_pairs=50, num_images=100, queries_per_epoch=20, pool_size=30)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert len(a[0]) == 20 and len(set(a[0])) == 20 and len(a[1]) == 30 and np.all(np.diff(a[1]) > 0)
    pairs, pool = mining.sample_epoch(0, 0, num_pairs=5, num_images=7, queries_per_epoch=20, pool_size=30)
    assert sorted(pairs) == list(range(5)) and list(pool) == list(range(7))
    with pytest.raises(ValueError, match="num_pairs"):
        mining.sample_epoch(0, 0, num_pairs=0, num_images=7, queries_per_epoch=2, pool_size=3)


def test_candidates_match_brute_force_and_exclude_own_landmark():
    qd, pd, ql, pl = _data()
    idx, sims = mining.negative_candidates(qd, pd, ql, pl, k=10, query_chunk=4)
    ref_idx, ref_sims = _brute_force(qd, pd, ql, pl, 10)
    np.testing.assert_allclose(sims, ref_sims, rtol=1e-5, atol=1e-6)
    valid = np.isfinite(sims)
    np.testing.assert_array_equal(idx[valid], ref_idx[valid])
    assert np.all(pl[idx][valid] != np.repeat(ql[:, None], 10, axis=1)[valid])


def test_candidates_with_pool_sharded_over_8_devices():
    assert jax.device_count() == 8
    qd, pd, ql, pl = _data(seed=1, p=64)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    idx, sims = mining.negative_candidates(qd, pd, ql, pl, k=7, pool_sharding=NamedSharding(mesh, P("data")))
    ref_idx, ref_sims = mining.negative_candidates(qd, pd, ql, pl, k=7)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, rtol=1e-6)


def test_select_negatives_prefers_distinct_landmarks():
    pool_labels = np.array([5, 5, 6, 7, 7, 8])
    cand = np.array([[0, 1, 3, 4, 2, 5]])
    sims = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    np.testing.assert_array_equal(mining.select_negatives(cand, sims, pool_labels, 3), [[0, 3, 2]])
    np.testing.assert_array_equal(mining.select_negatives(cand, sims, pool_labels, 3, distinct_labels=False),
                                  [[0, 1, 3]])
    # only 4 landmarks among the candidates: the 5th slot takes the next hardest
    np.testing.assert_array_equal(mining.select_negatives(cand, sims, pool_labels, 5), [[0, 3, 2, 5, 1]])


def test_select_negatives_too_few_candidates_is_an_error():
    cand = np.array([[0, 1, 2]])
    sims = np.array([[0.5, -np.inf, -np.inf]])
    with pytest.raises(ValueError, match="query 0 has 1 candidate negatives.*num_negatives=2"):
        mining.select_negatives(cand, sims, np.array([1, 2, 3]), 2)


def test_build_tuples_and_shape_errors():
    t = mining.build_tuples([1, 2], [3, 4], [[5, 6], [7, 8]])
    np.testing.assert_array_equal(t, [[1, 3, 5, 6], [2, 4, 7, 8]])
    with pytest.raises(ValueError, match="negative_ids"):
        mining.build_tuples([1, 2], [3, 4], [5, 6])
    with pytest.raises(ValueError, match="same D"):
        mining.negative_candidates(np.zeros((2, 3)), np.zeros((4, 5)), [0, 1], [0, 1, 2, 3], k=2)
