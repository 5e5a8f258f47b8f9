"""Tests for the remap-index command (build / search / info) on small descriptor files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from remap_jax.cli.index import main


def _write_features(path, descriptors, ids=None, failed=()):
    arrays = {"descriptors": descriptors.astype(np.float32), "failed": np.array(list(failed), dtype=str)}
    if ids is not None:
        arrays["ids"] = np.asarray(ids, dtype=str)
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    db = rng.standard_normal((600, 16))
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[:12] + 0.05 * rng.standard_normal((12, 16))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    db_ids = [f"db/{i:04d}.jpg" for i in range(600)]
    q_ids = [f"q/{i:02d}.jpg" for i in range(12)]
    return {
        "db": db.astype(np.float32),
        "q": q.astype(np.float32),
        "db_ids": np.array(db_ids),
        "db_path": _write_features(root / "db.npz", db, db_ids, failed=["db/broken.jpg"]),
        "q_path": _write_features(root / "q.npz", q, q_ids),
        "q_ids": np.array(q_ids),
    }


def test_build_and_search_exact(files, tmp_path, capsys):
    out = tmp_path / "idx"
    assert main(["build", "--features", files["db_path"], "--out", str(out)]) == 0
    assert "exact index over 600 x 16" in capsys.readouterr().out
    ranks = tmp_path / "r" / "ranks.npz"
    code = main(
        ["search", "--index", str(out), "--queries", files["q_path"], "--k", "20", "--out", str(ranks)]
    )
    assert code == 0
    assert "queries/s" in capsys.readouterr().out
    r = np.load(ranks)
    assert sorted(r.files) == ["ids", "positions", "query_ids", "scores"]
    sims = files["q"] @ files["db"].T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(r["positions"], expected)
    np.testing.assert_array_equal(r["ids"], files["db_ids"][expected])
    np.testing.assert_array_equal(r["query_ids"], files["q_ids"])
    np.testing.assert_allclose(r["scores"], np.take_along_axis(sims, expected, 1), rtol=1e-5, atol=1e-6)
    assert sorted(os.listdir(tmp_path / "r")) == ["ranks.npz"]  # no temporary file left


def test_build_scann_with_pq_and_leaves_then_info(files, tmp_path, capsys):
    out = tmp_path / "idx"
    args = ["build", "--features", files["db_path"], "--out", str(out), "--pq-bytes", "4", "--leaves", "8"]
    assert main(args + ["--leaves-to-search", "8", "--reorder", "600"]) == 0
    assert "scann index" in capsys.readouterr().out
    meta = json.loads((out / "index.json").read_text())
    assert meta["method"] == "scann" and meta["code_bytes"] == 4 and meta["options"]["leaves"] == 8
    assert main(["info", "--index", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["num_vectors"] == 600
    ranks = tmp_path / "ranks.npz"
    assert (
        main(["search", "--index", str(out), "--queries", files["q_path"], "--k", "5", "--out", str(ranks)])
        == 0
    )
    r = np.load(ranks)
    sims = files["q"] @ files["db"].T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    # every partition searched and every candidate re-scored: the exact top 5
    assert all(set(a) == set(b) for a, b in zip(r["positions"], expected, strict=True))


def test_build_and_search_several_files_and_globs(files, tmp_path, capsys):
    parts = tmp_path / "parts"
    parts.mkdir()
    db, ids = files["db"], files["db_ids"]
    for i, (lo, hi) in enumerate([(0, 200), (200, 450), (450, 600)]):  # the glob sorts part-0, -1, -2
        _write_features(parts / f"part-{i}.npz", db[lo:hi], ids[lo:hi])
    out = tmp_path / "idx"
    assert (
        main(
            [
                "build",
                "--features",
                str(parts / "part-0.npz"),
                str(parts / "part-[12].npz"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "from 3 files" in capsys.readouterr().out
    q = files["q"]
    _write_features(tmp_path / "q0.npz", q[:5], files["q_ids"][:5])
    _write_features(tmp_path / "q1.npz", q[5:], files["q_ids"][5:])
    ranks = tmp_path / "ranks.npz"
    search = ["search", "--index", str(out), "--queries", str(tmp_path / "q0.npz"), "--queries"]
    assert main(search + [str(tmp_path / "q1.npz"), "--k", "7", "--out", str(ranks)]) == 0  # repeated flag
    r = np.load(ranks)
    expected = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(r["positions"], expected)  # rows of the merged database
    np.testing.assert_array_equal(r["ids"], ids[expected])
    np.testing.assert_array_equal(r["query_ids"], files["q_ids"])
    # the same id in two files is refused, naming it and both files
    _write_features(parts / "part-3.npz", db[:2], ids[:2])
    assert main(["build", "--features", str(parts / "*.npz"), "--out", str(tmp_path / "dup")]) == 2
    err = capsys.readouterr().err
    assert "'db/0000.jpg'" in err and "part-0.npz (row 0)" in err and "part-3.npz (row 0)" in err


def test_build_scann_with_no_options_uses_the_defaults(files, tmp_path, capsys):
    out = tmp_path / "idx"
    assert main(["build", "--features", files["db_path"], "--out", str(out), "--method", "scann"]) == 0
    printed = capsys.readouterr().out
    assert "options: " in printed and "pq_bits=4" in printed and "reorder=100" in printed
    meta = json.loads((out / "index.json").read_text())
    assert meta["options"]["pq_bytes"] == 2 and meta["options"]["reorder_dtype"] == "float32"
    assert meta["options"]["leaves"] == 0  # 600 vectors: below the tree threshold
    # compact: codes only
    assert main(["build", "--features", files["db_path"], "--out", str(out), "--reorder", "0"]) == 0
    meta = json.loads((out / "index.json").read_text())
    assert meta["method"] == "scann" and meta["memory_bytes_per_vector"] == meta["code_bytes"] == 2


def test_truncate_dim_flag(files, tmp_path):
    out = tmp_path / "idx"
    assert main(["build", "--features", files["db_path"], "--out", str(out), "--truncate-dim", "8"]) == 0
    meta = json.loads((out / "index.json").read_text())
    assert meta["search_dim"] == 8 and meta["dim"] == 16 and meta["memory_bytes_per_vector"] == 32


def test_errors_are_clear_messages(files, tmp_path, capsys):
    missing = str(tmp_path / "nope.npz")
    assert main(["build", "--features", missing, "--out", str(tmp_path / "i")]) == 2
    assert "nope.npz: no such file" in capsys.readouterr().err
    np.savez(tmp_path / "wrong.npz", vectors=np.zeros((3, 4)))
    assert main(["build", "--features", str(tmp_path / "wrong.npz"), "--out", str(tmp_path / "i")]) == 2
    assert "no 'descriptors' array (found ['vectors'])" in capsys.readouterr().err
    bad = files["db"].copy()
    bad[5, 1] = np.nan
    nan_path = _write_features(tmp_path / "nan.npz", bad)
    assert main(["build", "--features", nan_path, "--out", str(tmp_path / "i")]) == 2
    assert "row 5 contains NaN" in capsys.readouterr().err
    args = ["build", "--features", files["db_path"], "--out", str(tmp_path / "i"), "--method", "exact"]
    assert main(args + ["--pq-bytes", "8"]) == 2
    assert "--pq-bytes only apply to --method scann" in capsys.readouterr().err
    (tmp_path / "notindex").mkdir()
    search = ["search", "--index", str(tmp_path / "notindex"), "--queries", files["q_path"]]
    assert main(search + ["--out", str(tmp_path / "r.npz")]) == 2
    assert "not a remap-jax index" in capsys.readouterr().err
    assert main(["build", "--features", files["db_path"], "--out", str(tmp_path / "idx")]) == 0
    search = ["search", "--index", str(tmp_path / "idx"), "--queries", files["q_path"], "--k", "601"]
    assert main(search + ["--out", str(tmp_path / "r.npz")]) == 2
    assert "k: expected 1 <= k <= 600" in capsys.readouterr().err
    wrong_dim = _write_features(tmp_path / "q8.npz", files["q"][:, :8])
    search = ["search", "--index", str(tmp_path / "idx"), "--queries", wrong_dim]
    assert main(search + ["--out", str(tmp_path / "r.npz")]) == 2
    assert "expected dimension 16" in capsys.readouterr().err
    assert not (tmp_path / "r.npz").exists()


def test_module_runs_as_a_command():
    out = subprocess.run(
        [sys.executable, "-m", "remap_jax.cli.index", "build", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--pq-bytes" in out.stdout and "--leaves" in out.stdout


# ---- train.eval integration: --index exact|scann --pq-bytes M


def _retrieval_problem(num_queries=6, per_landmark=8, distractors=200, d=32, seed=0):
    """Queries with known positives (same landmark, noisy) among random distractors, and its gnd list."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_queries, d))
    db, gnd = [], []
    for i in range(num_queries):
        start = len(db) * 0 + i * per_landmark
        db.extend(centers[i] + 0.6 * rng.standard_normal((per_landmark, d)))
        gnd.append(
            {
                "easy": np.arange(start, start + per_landmark // 2),
                "hard": np.arange(start + per_landmark // 2, start + per_landmark - 1),
                "junk": np.array([start + per_landmark - 1]),
            }
        )
    db = np.concatenate([np.array(db), rng.standard_normal((distractors, d))])
    q = centers + 0.3 * rng.standard_normal(centers.shape)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return unit(q), unit(db), gnd


def test_eval_descriptors_through_exact_and_scann_indexes():
    from remap_jax.evaluation.benchmark import evaluate_descriptors

    q, db, gnd = _retrieval_problem()
    plain = evaluate_descriptors(q, db, gnd)
    exact = evaluate_descriptors(q, db, gnd, index="exact")
    assert exact["medium"]["mAP"] == pytest.approx(plain["medium"]["mAP"])
    assert exact["index"]["bytes_per_image"] == 32 * 4
    # every candidate re-scored exactly: the ranking and mAP of exact search
    rescored, ranks = evaluate_descriptors(
        q, db, gnd, index="scann", index_options={"pq_bytes": 8, "reorder": len(db)}, return_ranks=True
    )
    assert ranks.shape == (len(db), len(q))
    assert rescored["medium"]["mAP"] == pytest.approx(plain["medium"]["mAP"])
    compressed = evaluate_descriptors(q, db, gnd, index="scann", index_options={"pq_bytes": 4, "reorder": 0},
                                      qe=True)
    assert compressed["index"]["bytes_per_image"] == compressed["index"]["code_bytes"] == 4
    assert compressed["index"]["method"] == "scann" and compressed["index"]["options"]["reorder"] == 0
    assert 0.0 < compressed["medium"]["mAP"] <= plain["medium"]["mAP"]
    default = evaluate_descriptors(q, db, gnd, index="scann", index_options={"pq_bytes": 4})
    assert default["index"]["bytes_per_image"] > 4  # codes + float32 re-scoring vectors
    top = evaluate_descriptors(q, db, gnd, index="exact", index_options={"truncate_dim": 16}, k=20)
    assert top["index"]["bytes_per_image"] == 16 * 4


class _FakeTestSet:
    name = "fake"
    num_distractors = 0

    def __init__(self, q, db, gnd):
        self.q, self.db, self.gnd = q, db, gnd
        self.num_queries, self.num_index = len(q), len(db)

    def read_query(self, i):
        return np.full((8, 8, 3), i, np.uint8)

    def read_index(self, i):
        return np.full((8, 8, 3), 100 + i % 100, np.uint8)


def test_eval_command_index_flags(tmp_path, monkeypatch, capsys):
    import remap_jax.data
    import remap_jax.evaluation.benchmark
    import train.eval as cmd

    q, db, gnd = _retrieval_problem()
    fake = _FakeTestSet(q, db, gnd)
    monkeypatch.setattr(cmd, "make_extractor", lambda args: "extractor")
    monkeypatch.setattr(remap_jax.evaluation.benchmark, "describe_test_set",
                        lambda extractor, test_set, **kw: (q, db))
    monkeypatch.setattr(remap_jax.data, "load_test_set", lambda *a, **k: fake)
    out = tmp_path / "out"
    common = ["--arch", "resnet18", "--dataset", "fake", "--out", str(out), "--batch-size", "1000"]
    res = cmd.main(common + ["--index", "scann", "--pq-bytes", "8", "--reorder", "0", "--grid-queries", "0"])
    assert res["index"]["bytes_per_image"] == 8 and res["index"]["options"]["pq_bytes"] == 8
    assert "scann index, 8 bytes/image" in capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())
    assert saved["index"]["bytes_per_image"] == 8
    with pytest.raises(SystemExit, match="--pq-bytes: only apply with --index scann"):
        cmd.main(common + ["--pq-bytes", "8"])
    with pytest.raises(SystemExit, match="--truncate-dim: needs --index"):
        cmd.main(common + ["--truncate-dim", "8"])
