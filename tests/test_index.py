"""Tests for remap_jax.search.index and the modules behind it (exact, index_options, index_files,
scann_backend): exact search against numpy, ScaNN PQ search, save/load, errors."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from remap_jax.search import exact, index_files, index_options
from remap_jax.search.exact import exact_search
from remap_jax.search.index import Index, truncate_and_normalize
from remap_jax.search.index_files import IndexFormatError


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


@pytest.mark.parametrize("k", [2500, 1500, 3001])
def test_exact_full_order_path_matches_a_stable_numpy_sort(monkeypatch, k):
    # Coarse values: many exact ties (also +0.0 vs -0.0 scores), all scores exact in float32.
    rng = np.random.default_rng(5)
    db = rng.integers(-2, 3, (3001, 8)).astype(np.float32) / 2
    db[[10, 500, 2999]] = 0.0
    q = rng.integers(-2, 3, (21, 8)).astype(np.float32) / 2
    q[3] = -q[4]
    sims = q @ db.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    monkeypatch.setattr(exact, "FULL_ORDER_MIN_K", 1000)  # k = 1500 and up: the host-sort path
    pos, scores = exact_search(db, q, k, chunk_bytes=256 * 8 * 4, query_batch=8)  # 12 chunks, 3 batches
    np.testing.assert_array_equal(pos, order)
    np.testing.assert_array_equal(scores, np.take_along_axis(sims, order, axis=1))
    assert pos.dtype == np.int64 and scores.dtype == np.float32 and scores.flags.c_contiguous
    pos_only, no_scores = exact_search(db, q, k, chunk_bytes=256 * 8 * 4, query_batch=8, return_scores=False)
    assert no_scores is None
    np.testing.assert_array_equal(pos_only, order)
    monkeypatch.setattr(exact, "FULL_ORDER_MIN_K", 10**9)  # the running device top-k, same answer
    running, _ = exact_search(db, q, k, chunk_bytes=256 * 8 * 4, query_batch=8)
    np.testing.assert_array_equal(running, order)


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


@pytest.mark.parametrize("bits,stored_codes", [(8, 8), (4, 16)])
def test_scann_pq_codes_are_m_bytes_and_recall_is_useful(data, tmp_path, bits, stored_codes):
    db, q = data
    truth, _ = _brute(db, q, 10)
    # codes only: no tree, no re-scoring vectors
    ix = Index.build(db, method="scann", pq_bytes=8, pq_bits=bits, leaves=0, reorder=0)
    assert ix.code_bytes == 8 and ix.memory_bytes_per_vector == 8
    pos, scores = ix.search_positions(q, 10)
    assert pos.shape == (45, 10) and np.isfinite(scores).all()
    assert _recall(pos, truth) > 0.4  # 8 bytes for 32 dims: approximate, far better than chance (0.005)
    # Scores are PQ estimates of the inner product: close to, but not equal to, the exact ones.
    exact_scores = np.take_along_axis(q @ db.T, pos, axis=1)
    assert np.abs(scores - exact_scores).mean() < 0.1
    # 8 bytes of codes: 8 sub-vectors of 8 bits or 16 of 4 bits (ScaNN saves a 4-bit code in a byte of its
    # own and packs two per byte in memory).
    ix.save(tmp_path / "ix")
    hashed = np.load(tmp_path / "ix" / "scann" / "hashed_dataset.npy")
    assert hashed.shape == (len(db), stored_codes) and hashed.dtype == np.uint8
    assert hashed.max() < 2**bits


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


# ---- default ScaNN options ---------------------------------------------------------------------------------


def test_default_scann_options_scale_with_the_database():
    resolve = index_options.resolve_options
    small = resolve("scann", {}, 32, 2000)
    assert small["leaves"] == 0 and small["leaves_to_search"] is None  # below TREE_MIN_VECTORS: no tree
    assert small["pq_bytes"] == 4 and small["pq_bits"] == 4  # d/8 bytes = d/4 sub-vectors of 4 bits
    assert small["reorder"] == 100 and small["reorder_dtype"] == "float32"
    assert small["anisotropic_threshold"] == 0.2 and small["spherical_tree"] is True
    assert resolve("scann", {}, 32, 2000, unit_norm=False)["spherical_tree"] is False
    assert small["residual_codes"] is True  # offsets from the leaf centre (ScaNN's fast path) ...
    assert resolve("scann", {"reorder": 0}, 32, 2000)["residual_codes"] is False  # ... but codes only
    assert resolve("scann", {"reorder": 0}, 32, 2000, unit_norm=False)["residual_codes"] is True
    mid = resolve("scann", {}, 512, 100_000)
    assert (mid["leaves"], mid["leaves_to_search"], mid["pq_bytes"]) == (300, 15, 64)
    big = resolve("scann", {}, 2048, 1_000_000)
    assert (big["leaves"], big["leaves_to_search"], big["pq_bytes"]) == (1000, 50, 256)
    edge = resolve("scann", {}, 128, index_options.TREE_MIN_VECTORS)
    assert edge["leaves"] == round(index_options.TREE_MIN_VECTORS**0.5)
    # given options win; leaves_to_search follows the given leaves; None/0 switch a stage off
    given = resolve("scann", {"leaves": 40, "reorder": 0, "anisotropic_threshold": None}, 512, 1_000_000)
    assert (given["leaves"], given["leaves_to_search"], given["reorder"]) == (40, 2, 0)
    assert given["anisotropic_threshold"] is None
    assert resolve("scann", {"leaves": None}, 512, 1_000_000)["leaves"] == 0
    # codes at the truncated dimension; 4-bit codes only while sub-vectors keep at least one dimension
    assert resolve("scann", {"truncate_dim": 128}, 512, 5000)["pq_bytes"] == 16
    assert resolve("scann", {"pq_bytes": 32}, 64, 5000)["pq_bits"] == 4
    assert resolve("scann", {"pq_bytes": 33}, 64, 5000)["pq_bits"] == 8
    assert sorted(small) == sorted(index_options.SCANN_OPTIONS)


def test_default_scann_index_has_high_recall_and_records_its_options(tmp_path):
    # Above TREE_MIN_VECTORS, so the default builds the k-means tree; queries are perturbed database rows.
    n = index_options.TREE_MIN_VECTORS
    db = _clustered(n, 32, clusters=200, noise=0.35, seed=3)
    rng = np.random.default_rng(4)
    q = _unit(db[rng.choice(n, 100, replace=False)] + 0.1 * rng.standard_normal((100, 32)))
    ix = Index.build(db, method="scann")
    assert ix.options["leaves"] == 141 and ix.options["leaves_to_search"] == 7 and ix.options["pq_bits"] == 4
    assert ix.options["spherical_tree"]  # unit rows
    assert not Index.build(db[:30] * 2, method="scann", leaves=3).options["spherical_tree"]
    pos, scores = ix.search_positions(q, 10)
    truth, truth_scores = _brute(db, q, 10)
    assert _recall(pos, truth) >= 0.9
    found = pos[:, 0] == truth[:, 0]
    np.testing.assert_allclose(scores[found, 0], truth_scores[found, 0], rtol=1e-5)  # float32 re-scoring
    ix.save(tmp_path / "ix")
    assert json.loads((tmp_path / "ix" / "index.json").read_text())["options"] == ix.options


def test_compact_index_keeps_codes_only(data):
    db, q = data
    ix = Index.build(db, method="scann", reorder=0)
    assert ix.options["reorder"] == 0 and ix.memory_bytes_per_vector == ix.code_bytes == 4
    with pytest.raises(ValueError, match="built without re-scoring"):
        ix.search(q, 10, reorder=50)


def test_scann_build_prints_no_info_lines_but_keeps_warnings():
    # ScaNN's C++ INFO lines (absl) are dropped on import; its warnings still reach stderr. A fresh process,
    # since the log level is set when scann is first imported.
    script = (
        "import numpy as np\n"
        "from remap_jax.search.index import Index\n"
        "from remap_jax.search.scann_backend import scann_min_log_level\n"
        "x = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)\n"
        "Index.build(x, method='scann', leaves=30).search(x[:5], 3)\n"
        "print('level', scann_min_log_level())\n"
        "Index.build(np.ones((300, 16), np.float32), method='scann', leaves=10)  # identical points: warns\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "level 1" in out.stdout  # absl WARNING
    info = [line for line in out.stderr.splitlines() if re.match(r"I\d{4} ", line)]
    assert info == [], info
    assert "points are exactly the same" in out.stderr  # a ScaNN warning (W... gmm_utils.cc)


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

    monkeypatch.setattr(index_files.np, "save", failing_save)
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


def test_saved_index_is_readable_by_others_as_the_umask_says(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        Index.build(np.eye(4, dtype=np.float32), method="exact").save(str(tmp_path / "idx"))
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "idx").st_mode & 0o777) == oct(0o755)
    for name in os.listdir(tmp_path / "idx"):
        assert oct(os.stat(tmp_path / "idx" / name).st_mode & 0o777) == oct(0o644), name
