"""The benchmark suite's search blocks (`exact_search`, `ranking`): exact top-k search and evaluation
ranking at up to 1M database rows against numpy, with equal results checked and the roofline of the search's
math (see `benchmarks/suite.py`). JAX is imported inside the functions."""

from __future__ import annotations

import time

from suite_rows import RowWriter


def _unit_rows(n: int, dim: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 65536):
        x = rng.standard_normal((min(65536, n - s), dim), dtype=np.float32)
        out[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def similarity_top_k_cost(num_queries: int, num_db: int, dim: int, k: int | None) -> dict:
    """XLA's cost of the search's math as one program: float32 scores queries @ database.T, then the top k
    per query (k None: the scores only, a deep ranking sorts them on the host). Its bound bounds the
    streamed search too: every database row must be read and scored."""
    import jax
    import jax.numpy as jnp
    import roofline

    def search(q, db):
        scores = q @ db.T
        return scores if k is None else jax.lax.top_k(scores, k)

    return roofline.cost(jax.jit(search), jax.ShapeDtypeStruct((num_queries, dim), jnp.float32),
                         jax.ShapeDtypeStruct((num_db, dim), jnp.float32))


def block_exact_search(cfg: dict, out: RowWriter, peaks: dict | None) -> None:
    import eval_bench
    import numpy as np
    import roofline

    from remap_jax.search.exact import exact_search

    n, dim, nq, k = cfg["n"], cfg["dim"], cfg["queries"], cfg["k"]
    db, queries = _unit_rows(n, dim, 0), _unit_rows(nq, dim, 1)
    config = {"num_db": n, "dim": dim, "queries": nq, "k": k}

    def measure():
        exact_search(db[: min(n, 65536)], queries, k)  # compiles the step for these query batches
        t0 = time.perf_counter()
        positions, _ = exact_search(db, queries, k)
        jax_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        reference = eval_bench.numpy_rank_database(queries, db, k=k).T  # (k, Q) -> (Q, k)
        numpy_s = time.perf_counter() - t0
        overlap = [len(np.intersect1d(a, b)) for a, b in zip(positions, reference, strict=True)]
        return {"jax_s": jax_s, "numpy_s": numpy_s, "queries_per_s": nq / jax_s, "speedup": numpy_s / jax_s,
                "identical_fraction": float(np.mean(np.all(positions == reference, axis=1))),
                "recall": float(np.mean(overlap)) / k,
                **roofline.fields(similarity_top_k_cost(nq, n, dim, k), peaks, "float32", jax_s)}

    out.timed("exact", config, measure)


def block_ranking(cfg: dict, out: RowWriter, peaks: dict | None) -> None:
    import eval_bench
    import roofline

    n, dim, nq = cfg["n"], cfg["dim"], cfg["queries"]
    config = {"num_db": n, "dim": dim, "queries": nq}

    def ranking():
        (row,) = eval_bench.bench_ranking([n], num_queries=nq, dim=dim, top=100, repeat=1)
        row["top_speedup"] = row["numpy_top100_s"] / row["jax_top100_s"]
        # the roofline of the top-100 figure; the full ranking's fraction next to it (scores only: the
        # sort runs on the host)
        full = roofline.fields(similarity_top_k_cost(nq, n, dim, None), peaks, "float32", row["jax_full_s"])
        row.update(roofline.fields(similarity_top_k_cost(nq, n, dim, 100), peaks, "float32",
                                   row["jax_top100_s"]))
        row["full_of_bound"] = full["of_bound"]
        return {"part": "ranking", **{k: v for k, v in row.items() if k not in config}}

    def scoring():  # numpy: no XLA program to bound
        (row,) = eval_bench.bench_scoring([n], num_queries=nq, repeat=1)
        return {"part": "scoring", **{k: v for k, v in row.items() if k not in config},
                **roofline.fields(None, None, "float32", row["vectorised_s"])}

    out.timed("ranking", {**config, "part": "ranking"}, ranking)
    out.timed("scoring", {**config, "part": "scoring"}, scoring)
