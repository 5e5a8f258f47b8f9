"""SuperGlobal re-ranking against a plain-loop numpy reference, its wiring and its input checks."""

import numpy as np
import pytest

from remap_jax.evaluation import expansion
from remap_jax.search import ranking
from remap_jax.search.rerank import SuperGlobal, rerank_ranks, superglobal_rerank


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n, dim, seed, clusters=6, spread=0.6):
    """Unit rows around a few centres, so that shortlists hold real neighbours."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return unit(centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)))


def reference_superglobal(q, db, shortlist, m, k, beta):
    """SuperGlobal's MDescAug + RerankwMDA written as plain loops (float64), one query at a time."""
    out = []
    for qi in range(q.shape[0]):
        ids = [int(i) for i in shortlist[qi, :m]]
        x = [db[i].astype(np.float64) for i in ids]
        refined = []
        for i in range(m):
            sims = [(float(np.dot(x[i], x[j])), j) for j in range(m) if j != i]
            sims.sort(key=lambda t: -t[0])  # stable: equal similarities keep the lower position
            total, weight = x[i].copy(), 1.0
            for s, j in sims[:k]:
                total += beta * s * x[j]
                weight += beta * s
            refined.append(total / weight)
        s = [float(np.dot(q[qi].astype(np.float64), r)) for r in refined]
        pre = sorted(range(m), key=lambda i: -s[i])
        expanded = refined[pre[0]].copy()
        for i in pre[1 : k + 1]:
            expanded = np.maximum(expanded, refined[i])
        final = {i: (s[i] + float(np.dot(expanded, refined[i]))) / 2 for i in range(m)}
        order = sorted(pre, key=lambda i: -final[i])  # stable over the refined order
        out.append([ids[i] for i in order])
    return np.asarray(out)


@pytest.mark.parametrize("m,k,beta", [(20, 4, 0.15), (20, 4, 1.0), (20, 0, 0.3), (20, 19, 0.5), (1, 0, 0.15)])
def test_matches_plain_loop_reference(m, k, beta):
    db = clustered(60, 24, 0)
    q = clustered(5, 24, 1)
    shortlist = ranking.rank_database(q, db, k=30).T
    positions, scores = superglobal_rerank(q, db, shortlist, SuperGlobal(m=m, k=k, beta=beta))
    expected = reference_superglobal(q, db, shortlist, m, k, beta)
    np.testing.assert_array_equal(positions, expected)
    assert positions.shape == scores.shape == (5, m)
    assert np.all(np.diff(scores, axis=1) <= 0)
    for a, b in zip(positions, shortlist[:, :m], strict=True):
        assert sorted(a) == sorted(b)  # only the top m is re-ordered


def test_device_database_gives_the_same_ranking():
    import jax

    db = clustered(80, 24, 2)
    q = clustered(7, 24, 3)
    shortlist = ranking.rank_database(q, db, k=25).T
    options = SuperGlobal(m=20, k=4, beta=0.2)
    host = superglobal_rerank(q, db, shortlist, options)
    device = superglobal_rerank(q, jax.device_put(db), shortlist, options)
    np.testing.assert_array_equal(host[0], device[0])
    np.testing.assert_allclose(host[1], device[1], rtol=1e-5, atol=1e-6)


def test_rank_database_reranks_only_the_top_m():
    db = clustered(70, 24, 4)
    q = clustered(6, 24, 5)
    plain = ranking.rank_database(q, db)
    options = SuperGlobal(m=20, k=4, beta=0.15)
    reranked = ranking.rank_database(q, db, rerank=options)
    np.testing.assert_array_equal(reranked[20:], plain[20:])
    np.testing.assert_array_equal(reranked, rerank_ranks(plain, q, db, options))
    assert not np.array_equal(reranked[:20], plain[:20])
    # a cut shallower than m still re-ranks the whole top m first, then cuts
    np.testing.assert_array_equal(ranking.rank_database(q, db, k=10, rerank=options), reranked[:10])


def test_query_batches_agree_with_one_batch(monkeypatch):
    from remap_jax.search import rerank

    db = clustered(50, 24, 6)
    q = clustered(11, 24, 7)
    shortlist = ranking.rank_database(q, db, k=20).T
    whole = superglobal_rerank(q, db, shortlist, SuperGlobal(m=20, k=4))
    monkeypatch.setattr(rerank, "_query_batch", lambda *a, **kw: 8)  # 2 batches, the last padded
    split = superglobal_rerank(q, db, shortlist, SuperGlobal(m=20, k=4))
    np.testing.assert_array_equal(whole[0], split[0])


def test_beta_zero_is_plain_expansion_of_unrefined_rows():
    db = clustered(40, 24, 8)
    q = clustered(3, 24, 9)
    shortlist = ranking.rank_database(q, db, k=20).T
    positions, _ = superglobal_rerank(q, db, shortlist, SuperGlobal(m=20, k=4, beta=0.0))
    np.testing.assert_array_equal(positions, reference_superglobal(q, db, shortlist, 20, 4, 0.0))


def test_parse_and_to_dict():
    assert SuperGlobal.parse("") == SuperGlobal()
    assert SuperGlobal.parse("m=50, k=4,beta=0.2") == SuperGlobal(m=50, k=4, beta=0.2)
    assert SuperGlobal(m=50, k=4, beta=0.2).to_dict() == {"method": "superglobal", "m": 50, "k": 4,
                                                          "beta": 0.2}
    with pytest.raises(ValueError, match="expected m=INT"):
        SuperGlobal.parse("M=5")
    with pytest.raises(ValueError, match="rerank k: expected a number"):
        SuperGlobal.parse("k=two")


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_options():
    with pytest.raises(ValueError, match=r"rerank k: expected 0 <= k < m=5 .*got k=5"):
        SuperGlobal(m=5, k=5)
    with pytest.raises(ValueError, match=r"rerank beta: expected a finite weight >= 0, got beta=-0.1"):
        SuperGlobal(beta=-0.1)
    with pytest.raises(ValueError, match="rerank beta"):
        SuperGlobal(beta=float("nan"))
    with pytest.raises(ValueError, match="rerank m: expected a shortlist of >= 1"):
        SuperGlobal(m=0, k=0)
    with pytest.raises(ValueError, match="rerank m: expected an integer"):
        SuperGlobal(m=2.5)


def test_m_larger_than_database():
    db = clustered(10, 8, 0)
    q = clustered(2, 8, 1)
    with pytest.raises(ValueError, match=r"rerank m: expected m <= 10 \(the database size\), got m=20"):
        superglobal_rerank(q, db, np.zeros((2, 20), np.int64), SuperGlobal(m=20))
    with pytest.raises(ValueError, match=r"rerank m: expected m <= 10"):
        ranking.rank_database(q, db, rerank=SuperGlobal(m=20))


def test_nan_rows():
    import jax

    db = clustered(30, 24, 0)
    q = clustered(2, 24, 1)
    shortlist = ranking.rank_database(q, db, k=20).T
    bad = db.copy()
    bad[shortlist[1, 3]] = np.nan
    match = rf"database: row {shortlist[1, 3]} \(in the shortlist of query [01]\) contains NaN"
    with pytest.raises(ValueError, match=match):
        superglobal_rerank(q, bad, shortlist, SuperGlobal(m=20, k=4))
    with pytest.raises(ValueError, match=match):
        superglobal_rerank(q, jax.device_put(bad), shortlist, SuperGlobal(m=20, k=4))
    nan_q = q.copy()
    nan_q[1, 0] = np.nan
    with pytest.raises(ValueError, match="queries: row 1 contains NaN"):
        superglobal_rerank(nan_q, db, shortlist, SuperGlobal(m=20, k=4))


def test_mismatched_dimensions_and_shortlists():
    db = clustered(30, 8, 0)
    q = clustered(2, 8, 1)
    with pytest.raises(ValueError, match=r"queries: expected shape \(Q, 8\)"):
        superglobal_rerank(clustered(2, 6, 1), db, np.zeros((2, 10), np.int64), SuperGlobal(m=10, k=3))
    with pytest.raises(ValueError, match=r"shortlist: expected integer shape \(2, >= 10\)"):
        superglobal_rerank(q, db, np.zeros((2, 5), np.int64), SuperGlobal(m=10, k=3))
    with pytest.raises(ValueError, match=r"shortlist: expected row numbers in 0..29"):
        superglobal_rerank(q, db, np.full((2, 10), 30), SuperGlobal(m=10, k=3))
    with pytest.raises(ValueError, match="rerank: expected a SuperGlobal"):
        superglobal_rerank(q, db, np.zeros((2, 10), np.int64), {"m": 10})
    with pytest.raises(ValueError, match="rerank: expected a SuperGlobal"):
        ranking.rank_database(q, db, rerank={"m": 10})


# ------------------------------------------------------------------------------------------------ Index


def test_index_search_reranks_exact_and_scann(tmp_path):
    from remap_jax.search.index import Index

    db = clustered(300, 24, 10)
    q = clustered(4, 24, 11)
    options = SuperGlobal(m=20, k=4)
    plain = ranking.rank_database(q, db, k=30).T
    expected, expected_scores = superglobal_rerank(q, db, plain, options)

    exact = Index.build(db, ids=np.arange(300) + 1000)
    ids, scores = exact.search(q, k=30, rerank=options)
    np.testing.assert_array_equal(ids[:, :20] - 1000, expected)
    np.testing.assert_array_equal(ids[:, 20:] - 1000, plain[:, 20:])
    np.testing.assert_allclose(scores[:, :20], expected_scores, rtol=1e-5, atol=1e-6)
    short, _ = exact.search(q, k=5, rerank=options)  # searched to depth m, then cut
    np.testing.assert_array_equal(short, ids[:, :5])
    one, _ = exact.search(q[0], k=5, rerank=options)
    np.testing.assert_array_equal(one, ids[0, :5])

    # ScaNN re-scoring every candidate (exact shortlist): built in this process, then saved and loaded
    scann = Index.build(db, method="scann", pq_bytes=4, reorder=len(db))
    np.testing.assert_array_equal(scann.search_positions(q, 30, rerank=options)[0][:, :20], expected)
    scann.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix")
    np.testing.assert_array_equal(loaded.search_positions(q, 30, rerank=options)[0][:, :20], expected)


@pytest.mark.parametrize("dtype,atol", [("bfloat16", 1e-2), ("int8", 2e-2)])
def test_loaded_scann_decodes_quantised_rescoring_vectors(tmp_path, dtype, atol):
    from remap_jax.search.index import Index

    db = clustered(200, 24, 12)
    Index.build(db, method="scann", pq_bytes=4, reorder=50, reorder_dtype=dtype).save(tmp_path / "ix")
    rows = Index.load(tmp_path / "ix").rerank_vectors()
    np.testing.assert_allclose(rows[np.array([[3, 7], [150, 0]])], db[[[3, 7], [150, 0]]], atol=atol)


def test_codes_only_scann_refuses_to_rerank():
    from remap_jax.search.index import Index

    db = clustered(200, 24, 13)
    ix = Index.build(db, method="scann", pq_bytes=4, reorder=0)
    with pytest.raises(ValueError, match=r"rerank: this ScaNN index keeps PQ codes only \(reorder=0\)"):
        ix.search(db[:2], 10, rerank=SuperGlobal(m=20, k=4))
    with pytest.raises(ValueError, match=r"rerank m: expected m <= 200"):
        Index.build(db).search(db[:2], 10, rerank=SuperGlobal(m=300, k=4))


# ------------------------------------------------------------------------------- evaluation and commands


def test_evaluate_descriptors_reranks_after_dba_and_qe_and_records_settings(tmp_path):
    import json

    from remap_jax.evaluation.benchmark import evaluate_descriptors, write_results

    db = clustered(120, 24, 14)
    q = clustered(4, 24, 15)
    gnd = [{"easy": np.arange(i, 120, 7)[:6], "hard": np.arange(i + 1, 120, 11)[:3], "junk": []}
           for i in range(4)]
    options = SuperGlobal(m=20, k=4)
    res, ranks = evaluate_descriptors(q, db, gnd, qe=True, dba=True, rerank=options, return_ranks=True)
    assert res["rerank"] == {"method": "superglobal", "m": 20, "k": 4, "beta": 1.0}
    aug = expansion.alpha_database_augmentation(db)
    expanded = expansion.alpha_query_expansion(q, aug)
    np.testing.assert_array_equal(ranks, ranking.rank_database(expanded, aug, rerank=options))
    write_results(str(tmp_path / "results.json"), res, name="toy")
    assert json.loads((tmp_path / "results.json").read_text())["rerank"]["m"] == 20
    via_index = evaluate_descriptors(q, db, gnd, rerank=options, index="exact")
    assert via_index["rerank"]["m"] == 20
    assert via_index["medium"]["mAP"] == evaluate_descriptors(q, db, gnd, rerank=options)["medium"]["mAP"]


def test_train_eval_rerank_flag(monkeypatch, capsys):
    import remap_jax.data
    import remap_jax.evaluation.benchmark
    import train.eval as cmd

    class FakeSet:
        name, num_queries, num_index, num_distractors = "toy", 3, 40, 0

    seen = {}

    def fake_run_eval(extractor, test_set, **options):
        seen.update(options)
        row = {"mAP": 50.0, "mP@1": 50.0, "mP@5": 50.0, "mP@10": 50.0, "num_queries": 3}
        return {"easy": row, "medium": row, "hard": row, "seconds": 0.1}

    monkeypatch.setattr(cmd, "make_extractor", lambda args: None)
    monkeypatch.setattr(remap_jax.data, "load_test_set", lambda *a, **kw: FakeSet())
    monkeypatch.setattr(remap_jax.evaluation.benchmark, "run_eval", fake_run_eval)
    common = ["--arch", "resnet18", "--dataset", "toy", "--out", "/nonexistent"]
    cmd.main([*common, "--rerank", "m=30,k=3"])
    assert seen["rerank"] == SuperGlobal(m=30, k=3)
    assert "SuperGlobal M=30 K=3 beta=1" in capsys.readouterr().out
    cmd.main([*common, "--rerank"])
    assert seen["rerank"] == SuperGlobal()
    cmd.main(common)
    assert seen["rerank"] is None
    with pytest.raises(SystemExit, match=r"--rerank m=5,k=5: rerank k: expected 0 <= k < m=5"):
        cmd.main([*common, "--rerank", "m=5,k=5"])


def test_config_test_rerank_is_checked_before_training():
    from train.configs.base import get_base_config
    from train.validate import validate_config

    config = get_base_config()
    assert config.test_rerank == ""
    config.model.pretrained = ""
    validate_config(config)
    config.test_rerank = "m=10,k=2,beta=0.3"
    validate_config(config)
    config.test_rerank = "m=10,k=20"
    with pytest.raises(ValueError, match=r"config.test_rerank = 'm=10,k=20': rerank k: expected 0 <= k < m"):
        validate_config(config)


def test_remap_index_search_rerank(tmp_path, capsys):
    from remap_jax.cli.index import main

    db = clustered(300, 24, 16)
    q = clustered(5, 24, 17)
    np.savez(tmp_path / "db.npz", descriptors=db, ids=np.array([f"d{i}" for i in range(300)]),
             failed=np.array([], str))
    np.savez(tmp_path / "q.npz", descriptors=q, ids=np.array([f"q{i}" for i in range(5)]),
             failed=np.array([], str))
    assert main(["build", "--features", str(tmp_path / "db.npz"), "--out", str(tmp_path / "idx")]) == 0
    out = tmp_path / "ranks.npz"
    search = ["search", "--index", str(tmp_path / "idx"), "--queries", str(tmp_path / "q.npz"), "--k", "25"]
    assert main([*search, "--rerank", "m=20,k=4", "--out", str(out)]) == 0
    assert "SuperGlobal M=20 K=4 beta=1" in capsys.readouterr().out
    r = np.load(out)
    plain = ranking.rank_database(q, db, k=25).T
    expected, _ = superglobal_rerank(q, db, plain, SuperGlobal(m=20, k=4))
    np.testing.assert_array_equal(r["positions"][:, :20], expected)
    np.testing.assert_array_equal(r["positions"][:, 20:], plain[:, 20:])
    assert str(r["rerank"]) == '{"method": "superglobal", "m": 20, "k": 4, "beta": 1.0}'

    assert main(["build", "--features", str(tmp_path / "db.npz"), "--out", str(tmp_path / "codes"),
                 "--method", "scann", "--pq-bytes", "4", "--reorder", "0"]) == 0
    capsys.readouterr()
    codes = ["search", "--index", str(tmp_path / "codes"), "--queries", str(tmp_path / "q.npz"), "--k", "5"]
    assert main([*codes, "--rerank", "--out", str(out)]) == 2
    assert "keeps PQ codes only" in capsys.readouterr().err
    assert main([*search, "--rerank", "m=20,k=25", "--out", str(out)]) == 2
    assert "rerank k: expected 0 <= k < m=20" in capsys.readouterr().err
