"""Tests for remap_jax.index: exact search against numpy, ScaNN PQ search, save/load, errors."""

import json
import os

import numpy as np
import pytest

from remap_jax import index as index_mod
from remap_jax.index import Index, IndexFormatError, exact_search, truncate_and_normalize


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(n, d, clusters=20, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    return _unit(centers[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, d)))


def _brute(db, q, k):
    s = q @ db.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


def _recall(found, truth):
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def data():
    db = _clustered(2000, 32, seed=0)
    rng = np.random.default_rng(1)
    q = _unit(db[:45] + 0.1 * rng.standard_normal((45, 32)))
    return db, q


# ---- exact -------------------------------------------------------------------------------------------------


def test_exact_matches_numpy_with_padded_chunks_and_query_batches(data):
    db, q = data
    # 128-row chunks (2000 = 15 full chunks + a padded one) and 16-query batches (45 = 2 full + 1 padded).
    ix = Index.build(db, method="exact", chunk_bytes=128 * 32 * 4, query_batch=16)
    pos, scores = ix.search(q, 25)
    ref_pos, ref_scores = _brute(db, q, 25)
    assert pos.shape == (45, 25) and pos.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(pos, ref_pos)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)


def test_exact_search_ties_prefer_lower_rows_across_chunks():
    db = np.zeros((300, 4), np.float32)
    db[:, 0] = 1.0  # every row ties
    pos, scores = exact_search(db, np.array([[1, 0, 0, 0]], np.float32), k=200, chunk_bytes=128 * 16)
    np.testing.assert_array_equal(pos[0], np.arange(200))
    np.testing.assert_array_equal(scores[0], np.ones(200, np.float32))


def test_exact_k_equals_database_size_and_single_query(data):
    db, q = data
    small = db[:7]
    ix = Index.build(small, method="exact")
    pos, scores = ix.search(q[0], 7)  # (D,) query -> (k,) results
    assert pos.shape == (7,) and scores.shape == (7,)
    np.testing.assert_array_equal(pos, _brute(small, q[:1], 7)[0][0])
    empty_pos, empty_scores = ix.search(np.zeros((0, 32), np.float32), 3)
    assert empty_pos.shape == (0, 3) and empty_scores.shape == (0, 3)


def test_string_ids_are_returned(data):
    db, q = data
    names = np.array([f"img_{i:05d}" for i in range(len(db))])
    ix = Index.build(db, ids=names, method="exact")
    ids, _ = ix.search(q[:3], 5)
    ref_pos, _ = _brute(db, q[:3], 5)
    np.testing.assert_array_equal(ids, names[ref_pos])
    pos, _ = ix.search_positions(q[:3], 5)
    np.testing.assert_array_equal(pos, ref_pos)


def test_truncate_dim_keeps_first_dims_renormalised(data):
    db, q = data
    ix = Index.build(db, method="exact", truncate_dim=8)
    assert ix.dim == 32 and ix.search_dim == 8 and ix.memory_bytes_per_vector == 32
    pos, scores = ix.search(q, 10)
    tdb, tq = truncate_and_normalize(db, 8), truncate_and_normalize(q, 8)
    np.testing.assert_allclose(np.linalg.norm(tdb, axis=1), 1.0, rtol=1e-5)
    ref_pos, ref_scores = _brute(tdb, tq, 10)
    np.testing.assert_array_equal(pos, ref_pos)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)


# ---- scann -------------------------------------------------------------------------------------------------


def test_scann_pq_codes_are_m_bytes_and_recall_is_useful(data, tmp_path):
    db, q = data
    truth, _ = _brute(db, q, 10)
    ix = Index.build(db, method="scann", pq_bytes=8, anisotropic_threshold=0.2)
    assert ix.code_bytes == 8 and ix.memory_bytes_per_vector == 8
    pos, scores = ix.search_positions(q, 10)
    assert pos.shape == (45, 10) and np.isfinite(scores).all()
    assert _recall(pos, truth) > 0.4  # 8 bytes for 32 dims: approximate, far better than chance (0.005)
    # Scores are PQ estimates of the inner product: close to, but not equal to, the exact ones.
    exact_scores = np.take_along_axis(q @ db.T, pos, axis=1)
    assert np.abs(scores - exact_scores).mean() < 0.1
    # The stored codes really are m bytes per vector.
    ix.save(tmp_path / "ix")
    hashed = np.load(tmp_path / "ix" / "scann" / "hashed_dataset.npy")
    assert hashed.shape == (len(db), 8) and hashed.dtype == np.uint8


def test_scann_full_reorder_gives_exact_results(data):
    db, q = data
    ix = Index.build(db, method="scann", pq_bytes=4, reorder=len(db))
    pos, scores = ix.search_positions(q, 10)
    ref_pos, ref_scores = _brute(db, q, 10)
    assert _recall(pos, ref_pos) == 1.0
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert ix.memory_bytes_per_vector == 4 + 32 * 4
    # reorder can be lowered at search time; results stay valid and sorted
    pos2, scores2 = ix.search_positions(q, 10, reorder=50)
    assert (np.diff(scores2, axis=1) <= 1e-6).all()


def test_scann_tree_returns_k_results_even_when_searched_leaves_are_small(data):
    db, q = data
    ix = Index.build(db, method="scann", pq_bytes=8, leaves=40, leaves_to_search=1, reorder=100)
    assert ix.memory_bytes_per_vector == 8 + 4 + 32 * 4
    pos, scores = ix.search_positions(q, 300)  # one leaf holds ~50 vectors: the search widens
    assert pos.shape == (45, 300) and np.isfinite(scores).all()
    assert all(len(set(row)) == 300 for row in pos) and pos.min() >= 0 and pos.max() < len(db)
    truth, _ = _brute(db, q, 10)
    wide, _ = ix.search_positions(q, 10, leaves_to_search=40)
    assert _recall(wide, truth) >= 0.9  # all leaves + re-scoring of 100 candidates
    with pytest.raises(ValueError, match="leaves_to_search"):
        ix.search(q, 10, leaves_to_search=41)


def test_scann_truncate_dim(data):
    db, q = data
    ix = Index.build(db, method="scann", truncate_dim=16, pq_bytes=16, reorder=len(db))
    assert ix.search_dim == 16 and ix.code_bytes == 16
    pos, _ = ix.search_positions(q, 5)
    ref_pos, _ = _brute(truncate_and_normalize(db, 16), truncate_and_normalize(q, 16), 5)
    assert _recall(pos, ref_pos) == 1.0


# ---- save / load -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,options", [("exact", {}), ("scann", {"pq_bytes": 8, "leaves": 10, "leaves_to_search": 3})]
)
def test_save_load_reproduces_search(data, tmp_path, method, options):
    db, q = data
    names = np.array([f"n{i}" for i in range(len(db))])
    ix = Index.build(db, ids=names, method=method, **options)
    ids, scores = ix.search(q, 20)
    path = ix.save(tmp_path / "ix")
    assert sorted(os.listdir(tmp_path)) == ["ix"]  # no temporary folders left behind
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert meta["method"] == method and meta["num_vectors"] == len(db) and meta["dim"] == 32
    loaded = Index.load(path)
    assert loaded.method == method and loaded.options == ix.options and len(loaded) == len(db)
    ids2, scores2 = loaded.search(q, 20)
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_array_equal(scores2, scores)
    if method == "exact":
        assert isinstance(loaded._database, np.memmap)  # bounded memory for big databases


def test_save_replaces_an_existing_index(data, tmp_path):
    db, q = data
    Index.build(db[:100], method="exact").save(tmp_path / "ix")
    Index.build(db, method="exact").save(tmp_path / "ix")
    assert len(Index.load(tmp_path / "ix")) == len(db)
    assert sorted(os.listdir(tmp_path)) == ["ix"]


def test_interrupted_save_leaves_nothing_that_loads(data, tmp_path, monkeypatch):
    db, _ = data
    ix = Index.build(db, method="exact")
    ix.save(tmp_path / "old")
    calls = {"n": 0}
    real_save = np.save

    def failing_save(path, arr, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # after ids.npy, while writing the database
            raise KeyboardInterrupt("simulated interruption")
        return real_save(path, arr, *args, **kwargs)

    monkeypatch.setattr(index_mod.np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        ix.save(tmp_path / "new")
    calls["n"] = 0
    small = Index.build(db[:10], method="exact")
    with pytest.raises(KeyboardInterrupt):
        small.save(tmp_path / "old")  # replacing an index: the old one must survive intact
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["old"]
    assert len(Index.load(tmp_path / "old")) == len(db)


# ---- errors ------------------------------------------------------------------------------------------------


def test_build_errors(data):
    db, _ = data
    with pytest.raises(ValueError, match="empty database"):
        Index.build(np.zeros((0, 32), np.float32))
    with pytest.raises(ValueError, match=r"descriptors: expected rank 2"):
        Index.build(db[0])
    bad = db.copy()
    bad[17, 3] = np.nan
    with pytest.raises(ValueError, match="descriptors: row 17 contains NaN"):
        Index.build(bad)
    bad[17, 3] = np.inf
    with pytest.raises(ValueError, match="row 17"):
        Index.build(bad, method="scann")
    with pytest.raises(ValueError, match="method"):
        Index.build(db, method="faiss")
    with pytest.raises(ValueError, match="unknown option"):
        Index.build(db, method="exact", pq_bytes=8)
    with pytest.raises(ValueError, match="pq_bytes"):
        Index.build(db, method="scann", pq_bytes=33)
    with pytest.raises(ValueError, match="leaves"):
        Index.build(db[:5], method="scann", leaves=6)
    with pytest.raises(ValueError, match="truncate_dim"):
        Index.build(db, truncate_dim=64)
    with pytest.raises(ValueError, match="ids: expected shape"):
        Index.build(db, ids=["a", "b"])
    with pytest.raises(ValueError, match="duplicated"):
        Index.build(db[:3], ids=["a", "b", "a"])


@pytest.mark.parametrize("method", ["exact", "scann"])
def test_search_errors(data, method):
    db, q = data
    ix = Index.build(db[:50], method=method, **({"pq_bytes": 4} if method == "scann" else {}))
    with pytest.raises(
        ValueError, match=r"queries: expected dimension 32 \(the index's\), got shape \(45, 16\)"
    ):
        ix.search(q[:, :16], 5)
    bad = q.copy()
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match="queries: row 2 contains NaN"):
        ix.search(bad, 5)
    with pytest.raises(ValueError, match=r"k: expected 1 <= k <= 50"):
        ix.search(q, 51)
    with pytest.raises(ValueError, match="k: expected 1 <= k"):
        ix.search(q, 0)
    with pytest.raises(ValueError, match="unknown option"):
        ix.search(q, 5, bogus=1)


def test_load_errors(tmp_path, data):
    with pytest.raises(IndexFormatError, match="not found"):
        Index.load(tmp_path / "missing")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(IndexFormatError, match="not a remap-jax index"):
        Index.load(tmp_path / "photos")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "index.json").write_text('{"format": "something-else"}')
    with pytest.raises(IndexFormatError, match="not a remap-jax-index file"):
        Index.load(tmp_path / "other")
    db, _ = data
    Index.build(db[:20], method="exact").save(tmp_path / "ix")
    os.remove(tmp_path / "ix" / "database.npy")
    with pytest.raises(IndexFormatError, match="missing"):
        Index.load(tmp_path / "ix")
    # saving over a folder that is not an index is refused and deletes nothing
    with pytest.raises(FileExistsError, match="not a remap-jax index"):
        Index.build(db[:20], method="exact").save(tmp_path / "photos")
    assert (tmp_path / "photos" / "a.jpg").exists()


def test_index_is_exported_lazily():
    import remap_jax

    assert remap_jax.Index is Index
