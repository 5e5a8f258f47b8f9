"""Tests for remap_jax.evaluation.metrics, remap_jax.search.ranking and remap_jax.evaluation.expansion with
hand-computed cases."""

import numpy as np
import pytest

from remap_jax.evaluation import expansion, metrics
from remap_jax.search import exact, ranking


def _ranks(*columns):
    return np.stack([np.asarray(c, dtype=np.int64) for c in columns], axis=1)


def test_ap_positives_at_0_2_5_of_3_is_trapezoid_not_textbook():
    # j=0,r=0: (1 + 1)/2 = 1; j=1,r=2: (1/2 + 2/3)/2 = 7/12; j=2,r=5: (2/5 + 3/6)/2 = 9/20.
    expected = (1 + 7 / 12 + 9 / 20) / 3  # 0.67778, the textbook AP would be 0.72222
    assert metrics.average_precision(np.array([0, 2, 5]), 3) == pytest.approx(expected)
    ranks = _ranks([10, 11, 12, 13, 14, 15, 16])  # db ids in ranked order
    m, aps, mpr, prs = metrics.compute_map(ranks, [{"ok": [10, 12, 15], "junk": []}])
    assert m == pytest.approx(expected)
    assert m != pytest.approx(0.7222, abs=1e-3)
    # mP@k: largest positive rank (1-based) is 6. k=1 -> 1/1; k=5 -> 2 positives at <=5 -> 2/5;
    # k=10 -> k' = min(6, 10) = 6 -> 3/6.
    np.testing.assert_allclose(mpr, [1.0, 0.4, 0.5])
    np.testing.assert_allclose(prs[0], [1.0, 0.4, 0.5])
    np.testing.assert_allclose(aps, [expected])


def test_unretrieved_positive_counts_in_denominator():
    ranks = _ranks([0, 1, 2, 3])  # top-4 cut, positive 9 never retrieved
    m, _, mpr, _ = metrics.compute_map(ranks, [{"ok": [0, 9]}])
    assert m == pytest.approx(0.5)
    np.testing.assert_allclose(mpr, [1.0, 1.0, 1.0])


def test_junk_before_positives_shifts_ranks_up():
    # ranking: junk, pos, neg, junk, pos -> after removing junk: pos(0), neg(1), pos(2)
    ranks = _ranks([7, 1, 5, 8, 2])
    m, _, mpr, _ = metrics.compute_map(ranks, [{"ok": [1, 2], "junk": [7, 8]}])
    expected = (1.0 + (0.5 + 2 / 3) / 2) / 2
    assert m == pytest.approx(expected)
    # 1-based positive ranks [1, 3]; k=5 -> k'=3 -> 2/3; k=10 -> 2/3
    np.testing.assert_allclose(mpr, [1.0, 2 / 3, 2 / 3])


def test_junk_after_all_positives_changes_nothing():
    ranks = _ranks([1, 5, 2, 7, 8])
    with_junk = metrics.compute_map(ranks, [{"ok": [1, 2], "junk": [7, 8]}])[0]
    without = metrics.compute_map(ranks, [{"ok": [1, 2], "junk": []}])[0]
    assert with_junk == pytest.approx(without) == pytest.approx((1.0 + (0.5 + 2 / 3) / 2) / 2)


def test_query_without_positives_is_skipped_in_means():
    ranks = _ranks([0, 1, 2], [2, 1, 0])
    m, aps, mpr, prs = metrics.compute_map(ranks, [{"ok": [0], "junk": []}, {"ok": [], "junk": [1]}])
    assert m == pytest.approx(1.0)
    assert aps[0] == pytest.approx(1.0) and np.isnan(aps[1])
    assert np.isnan(prs[1]).all()
    np.testing.assert_allclose(mpr, [1.0, 1.0, 1.0])
    m, aps, mpr, _ = metrics.compute_map(ranks, [{"ok": []}, {"ok": []}])
    assert m == 0.0 and np.isnan(aps).all()


def test_ties_in_kappas_and_kappa_beyond_last_positive():
    # single positive at 1-based rank 2: every k >= 2 gives k' = 2 -> 1/2; k = 1 -> 0.
    ranks = _ranks([3, 0, 1, 2])
    _, _, mpr, _ = metrics.compute_map(ranks, [{"ok": [0]}], kappas=(1, 2, 2, 10, 100))
    np.testing.assert_allclose(mpr, [0.0, 0.5, 0.5, 0.5, 0.5])


def test_two_queries_mean_and_duplicate_gnd_entries():
    ranks = _ranks([0, 1, 2, 3], [3, 2, 1, 0])
    gnd = [{"ok": [0, 0, 1]}, {"ok": [0], "junk": [0]}]  # duplicates removed; ok wins over junk
    m, aps, _, _ = metrics.compute_map(ranks, gnd)
    np.testing.assert_allclose(aps, [1.0, metrics.average_precision(np.array([3]), 1)])
    assert m == pytest.approx(np.mean(aps))


def test_revisited_setups_and_percentages():
    # db ranked for the query: 0 easy, 1 hard, 2 neg, 3 junk, 4 hard
    ranks = _ranks([0, 1, 2, 3, 4])
    gnd = [{"easy": [0], "hard": [1, 4], "junk": [3], "bbx": [0, 0, 1, 1]}]
    res = metrics.evaluate_revisited(ranks, gnd)
    # Easy: ok={0}, ignore {3,1,4} -> AP 1.
    assert res["easy"]["mAP"] == pytest.approx(100.0)
    # Medium: ok={0,1,4}, ignore {3}: ranks 0,1,3 -> (1 + 1 + (2/3 + 3/4)/2)/3
    assert res["medium"]["mAP"] == pytest.approx(100 * (2 + (2 / 3 + 3 / 4) / 2) / 3)
    # Hard: ok={1,4}, ignore {3,0}: ranking becomes 1, 2, 4 -> ranks 0, 2
    assert res["hard"]["mAP"] == pytest.approx(100 * (1 + (1 / 2 + 2 / 3) / 2) / 2)
    assert res["hard"]["mP@5"] == pytest.approx(100 * 2 / 3)
    assert res["medium"]["num_queries"] == 1
    table = metrics.format_revisited_table(res, title="toy")
    assert "Easy" in table and "Medium" in table and "Hard" in table and "100.00" in table
    assert "mP@10" in table


def test_revisited_skips_query_without_hard_positives():
    ranks = _ranks([0, 1], [1, 0])
    gnd = [{"easy": [0], "hard": [], "junk": []}, {"easy": [], "hard": [0], "junk": []}]
    res = metrics.evaluate_revisited(ranks, gnd)
    assert res["hard"]["num_queries"] == 1 and res["easy"]["num_queries"] == 1
    assert res["hard"]["mAP"] == pytest.approx(25.0)  # hard positive at rank 1: (0/1 + 1/2) / 2
    assert res["easy"]["mAP"] == pytest.approx(100.0)


def test_classic_and_holidays():
    ranks = _ranks([0, 1, 2])
    assert metrics.evaluate_classic(ranks, [{"easy": [1], "hard": [2], "junk": [0]}]) == pytest.approx(100.0)
    expected = 100 * (0 / 2 + 1 / 3) / 2
    assert metrics.evaluate_classic(ranks, [{"ok": [2], "junk": []}]) == pytest.approx(expected)
    names = ["100000.jpg", "100001.jpg", "100100.jpg", "100101.jpg", "100102.jpg"]
    queries, gnd = metrics.holidays_ground_truth(names)
    np.testing.assert_array_equal(queries, [0, 2])
    np.testing.assert_array_equal(gnd[1]["ok"], [3, 4])
    # each query ranks itself first (ignored), then its group
    ranks = _ranks([0, 1, 2, 3, 4], [2, 3, 0, 4, 1])
    # query 1 after removing itself: 3 (0), 0 (1), 4 (2) -> (1 + (1/2 + 2/3)/2) / 2
    expected = 100 * (1.0 + (1 + (0.5 + 2 / 3) / 2) / 2) / 2
    assert metrics.evaluate_holidays(ranks, gnd) == pytest.approx(expected)
    with pytest.raises(ValueError, match="Holidays names"):
        metrics.holidays_ground_truth(["abc.jpg"])


def test_input_errors_name_the_problem():
    with pytest.raises(ValueError, match="ranks: expected rank 2"):
        metrics.compute_map(np.arange(3), [{"ok": [0]}])
    with pytest.raises(ValueError, match="one column per query"):
        metrics.compute_map(np.zeros((3, 2), np.int64), [{"ok": [0]}])
    with pytest.raises(ValueError, match="integer"):
        metrics.compute_map(np.zeros((3, 1)), [{"ok": [0]}])
    with pytest.raises(ValueError, match="'ok'"):
        metrics.compute_map(np.zeros((3, 1), np.int64), [{"positives": [0]}])
    with pytest.raises(ValueError, match="missing"):
        metrics.evaluate_revisited(np.zeros((3, 1), np.int64), [{"easy": [0]}])


def test_vectorised_path_matches_reference_loop():
    rng = np.random.default_rng(0)
    n, nq = 300, 7
    ranks = np.stack([rng.permutation(n) for _ in range(nq)], axis=1)
    gnd = []
    for _ in range(nq):
        ids = rng.choice(n, size=30, replace=False)
        gnd.append({"ok": ids[: rng.integers(0, 15)], "junk": ids[15:]})

    def reference(col, ok, junk):
        if len(ok) == 0:
            return np.nan
        kept = [d for d in col if d not in set(junk.tolist())]
        pos = [r for r, d in enumerate(kept) if d in set(ok.tolist())]
        ap = 0.0
        for j, r in enumerate(pos):
            before = 1.0 if r == 0 else j / r
            ap += (before + (j + 1) / (r + 1)) / 2
        return ap / len(ok)

    _, aps, _, _ = metrics.compute_map(ranks, gnd)
    expected = [reference(ranks[:, q], g["ok"], g["junk"]) for q, g in enumerate(gnd)]
    np.testing.assert_allclose(aps, expected)
    # a top-k cut scores unretrieved positives as missed
    _, aps_k, _, _ = metrics.compute_map(ranks[:50], gnd)
    assert np.all((aps_k <= aps + 1e-12) | np.isnan(aps))


def test_rank_database_full_and_topk_agree_with_ties_by_index():
    rng = np.random.default_rng(1)
    db = rng.normal(size=(40, 8)).astype(np.float32)
    db[7] = db[3]  # exact tie
    q = np.stack([db[3], rng.normal(size=8).astype(np.float32)])
    full = ranking.rank_database(q, db)
    assert full.shape == (40, 2) and full.dtype == np.int64
    assert full[0, 0] in (3, 7)
    np.testing.assert_array_equal(full[:2, 0], [3, 7])  # tie broken by lower index
    topk = ranking.rank_database(q, db, k=5, chunk=16)
    np.testing.assert_array_equal(topk, full[:5])
    with pytest.raises(ValueError, match="descriptor sizes differ"):
        ranking.rank_database(q, db[:, :4])
    with pytest.raises(ValueError, match="NaN"):
        ranking.rank_database(np.full((1, 8), np.nan), db)


def _numpy_ranks(q, db):
    """The reference ranking: a stable argsort of the negated scores per query (ties: lower index)."""
    return np.argsort(-(db @ q.T), axis=0, kind="stable")


def test_rank_database_full_depth_is_identical_to_a_stable_sort_with_many_ties():
    # 4200 images (full depth takes the host-sort path of exact_search), coarse values: exact float32 scores
    # with many ties, including +0.0 / -0.0; duplicates of one image.
    rng = np.random.default_rng(3)
    db = rng.integers(-2, 3, (4200, 6)).astype(np.float32) / 2
    db[[5, 9, 77, 1300]] = 1.0
    db[100] = 0.0
    q = rng.integers(-2, 3, (13, 6)).astype(np.float32) / 2
    q[0] = 1.0  # the best score, 6, for exactly the all-ones rows
    expected = _numpy_ranks(q, db)
    ranks = ranking.rank_database(q, db, chunk=300)
    assert 4200 >= exact.FULL_ORDER_MIN_K and ranks.shape == (4200, 13) and ranks.dtype == np.int64
    np.testing.assert_array_equal(ranks, expected)
    best = np.flatnonzero((db == 1).all(axis=1))  # [5, 9, 77, 1300] and any other all-ones row
    np.testing.assert_array_equal(ranks[: len(best), 0], best)  # the duplicates, in index order
    assert ranks[:, 0].flags.c_contiguous or ranks.T.flags.c_contiguous  # one query's column is contiguous
    # a top-k cut (running device top-k) is the head of the full ranking, ties at the cut included
    np.testing.assert_array_equal(ranking.rank_database(q, db, k=50, chunk=300), expected[:50])
    np.testing.assert_array_equal(ranking.rank_database(q, db, k=5000), expected)  # k beyond N: everything
    assert ranking.rank_database(q[:0], db).shape == (4200, 0)


def test_alpha_qe_and_dba_by_hand():
    db = np.array([[1, 0], [0.6, 0.8], [0, 1]], np.float32)
    q = np.array([[1, 0]], np.float32)
    out = expansion.alpha_query_expansion(q, db, k=2, alpha=1.0)
    # neighbours: db0 (sim 1), db1 (sim 0.6): q + 1*db0 + 0.6*db1 = (2.36, 0.48)
    expected = np.array([2.36, 0.48]) / np.hypot(2.36, 0.48)
    np.testing.assert_allclose(out[0], expected, rtol=1e-5)
    np.testing.assert_allclose(expansion.alpha_query_expansion(q, db, k=0), q)
    aug = expansion.alpha_database_augmentation(db, k=1, alpha=2.0)
    # db0's best other neighbour is db1 (0.6): db0 + 0.36 * db1
    v = np.array([1 + 0.36 * 0.6, 0.36 * 0.8])
    np.testing.assert_allclose(aug[0], v / np.linalg.norm(v), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(aug, axis=1), 1.0, rtol=1e-5)
    # negative similarities get zero weight
    out = expansion.alpha_query_expansion(np.array([[-1, 0]], np.float32), db[2:], k=1)
    np.testing.assert_allclose(out, [[-1, 0]], atol=1e-6)


def test_large_ranking_is_scored_quickly_enough_to_run_here():
    # 20 queries x 200k database: exercises the inverse-permutation path at scale (no timing asserted).
    rng = np.random.default_rng(2)
    n, nq = 200_000, 20
    ranks = np.tile(np.arange(n, dtype=np.int64)[:, None], (1, nq))
    gnd = [
        {"ok": rng.choice(n, 50, replace=False), "junk": rng.choice(n, 20, replace=False)} for _ in range(nq)
    ]
    m, aps, _, _ = metrics.compute_map(ranks, gnd)
    assert 0.0 <= m <= 1.0 and np.isfinite(aps).all()
