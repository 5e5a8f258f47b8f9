"""Evaluating a model on a retrieval benchmark: describe, rank (exactly or through an index), score, report.

    from remap_jax import Extractor
    from remap_jax.data import load_test_set
    from remap_jax.evaluation.benchmark import run_eval

    results = run_eval(Extractor.from_checkpoint("/tmp/remap_demo/export"), load_test_set("roxford5k"),
                       out_dir="/tmp/eval", qe=True)
    results["medium"]["mAP"]

`remap_jax.evaluation.metrics` holds the metrics (arrays of ranks in, numbers out); this module runs a model
on a test
set with the one description path (`remap_jax.Extractor`), ranks, scores with the revisited protocol and
writes `results.json` (valid JSON: NaN becomes null), `descriptors.npz` and the top-k PNG grid. The database
description is kept in `out_dir/index.partial.npz` as it goes, so an interrupted 1M-image run resumes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from remap_jax.data.images import ImageList, resize_long_side
from remap_jax.describe.extractor import Extractor
from remap_jax.describe.resumable import describe_resumable
from remap_jax.evaluation import expansion, metrics
from remap_jax.runtime import atomic
from remap_jax.search import ranking

__all__ = ["build_index", "describe_test_set", "evaluate_descriptors", "rank", "run_eval", "save_topk_grid",
           "validation_map", "write_results"]


def build_index(dbvecs, method: str = "exact", **options):
    """A :class:`remap_jax.search.index.Index` over the database rows (ids = row numbers) for :func:`rank`.

    ``method``/``options`` as in ``Index.build``: e.g. ``method="scann", pq_bytes=64`` for 64-byte PQ codes,
    ``truncate_dim=d`` for the top-d signatures.
    """
    from remap_jax.search.index import Index

    return Index.build(np.asarray(dbvecs, np.float32), method=method, **options)


def rank(qvecs, dbvecs, k: int | None = None, *, index=None, rerank=None) -> np.ndarray:
    """Ranks the database for each query -> int64 (num_db or k, num_queries), best first.

    ``index``: a :class:`remap_jax.search.index.Index` built over ``dbvecs`` (see :func:`build_index`; e.g.
    ScaNN
    product-quantised codes); None ranks exactly (`remap_jax.search.ranking.rank_database`).
    ``rerank``: a :class:`remap_jax.search.rerank.SuperGlobal` re-ranking each query's top M (None: none).
    """
    if index is None:
        return ranking.rank_database(qvecs, dbvecs, k=k, rerank=rerank)
    if len(index) != len(dbvecs):
        raise ValueError(f"index: holds {len(index)} vectors, expected {len(dbvecs)} (one per database row)")
    depth = len(index) if k is None else min(k, len(index))
    positions, _ = index.search_positions(np.asarray(qvecs, np.float32), depth, rerank=rerank)
    return positions.T.astype(np.int64)


def evaluate_descriptors(
    qvecs,
    dbvecs,
    test_set,
    *,
    qe: bool = False,
    qe_k: int = 2,
    qe_alpha: float = 3.0,
    dba: bool = False,
    dba_k: int = 2,
    dba_alpha: float = 3.0,
    k: int | None = None,
    kappas: Sequence[int] = (1, 5, 10),
    return_ranks: bool = False,
    index: str | None = None,
    index_options: dict | None = None,
    rerank=None,
    protocol: str | None = None,
):
    """Scores query/database descriptors under the revisited protocol (or the labelled one).

    Args:
      qvecs: (num_queries, D) query descriptors, in the order of ``test_set.gnd``.
      dbvecs: (num_db, D) database descriptors (benchmark index first, then any distractors).
      test_set: a :class:`remap_jax.data.TestSet` or the gnd list itself.
      qe, qe_k, qe_alpha: alpha-query-expansion of the queries (after DBA when both are on).
      dba, dba_k, dba_alpha: alpha-database-side augmentation (quadratic in the database size).
      k: keep only the top k of each ranking (None: the whole database).
      index, index_options: rank through a :class:`remap_jax.search.index.Index` (``"exact"`` or ``"scann"``,
      with
        ``Index.build`` options such as ``pq_bytes``; ``reorder=0`` scores the codes alone, without it ScaNN
        re-scores candidates with the stored vectors); the results then carry ``index``: method, the resolved
        options, ``bytes_per_image`` (what one database image costs the index in memory: codes, leaf index and
        any re-scoring vectors) and ``code_bytes``. QE expands queries with the uncompressed database vectors.
      rerank: a :class:`remap_jax.search.rerank.SuperGlobal`: the final ranking's top M re-ranked (after DBA
      and
        QE, with the expanded queries and the augmented database rows; through the index's vectors when
        ``index`` is given); the results then carry ``rerank``: its settings (``SuperGlobal.to_dict``).
      protocol: ``"revisited"`` (Easy/Medium/Hard) or ``"labels"`` (one setup ``all`` with Recall@k:
        :func:`remap_jax.evaluation.metrics.evaluate_labelled`); None: the test set's ``protocol``, else
        revisited.

    Returns:
      the :func:`remap_jax.evaluation.metrics.evaluate_revisited` dict (percent), plus ``ranks`` when asked
      for.
    """
    protocol = protocol or getattr(test_set, "protocol", "revisited")
    if protocol not in ("revisited", "labels"):
        raise ValueError(f"protocol: expected 'revisited' or 'labels', got {protocol!r}")
    gnd = list(test_set.gnd if hasattr(test_set, "gnd") else test_set)
    qvecs = np.asarray(qvecs, np.float32)
    dbvecs = np.asarray(dbvecs, np.float32)
    if qvecs.ndim != 2 or qvecs.shape[0] != len(gnd):
        raise ValueError(f"qvecs: expected shape ({len(gnd)}, D) (one row per query), got {qvecs.shape}")
    if dbvecs.ndim != 2 or dbvecs.shape[1] != qvecs.shape[1]:
        raise ValueError(f"dbvecs: expected shape (num_db, {qvecs.shape[1]}), got {dbvecs.shape}")
    num_index = getattr(test_set, "num_index", None)
    if num_index is not None and dbvecs.shape[0] != num_index:
        raise ValueError(f"dbvecs: expected {num_index} rows (the test set's index), got {dbvecs.shape[0]}")
    if dba:
        dbvecs = expansion.alpha_database_augmentation(dbvecs, k=dba_k, alpha=dba_alpha)
    searcher = None if index is None else build_index(dbvecs, index, **(index_options or {}))
    if qe:
        first = rank(qvecs, dbvecs, k=max(qe_k, 1), index=searcher)
        qvecs = expansion.alpha_query_expansion(qvecs, dbvecs, k=qe_k, alpha=qe_alpha, ranks=first)
    ranks = rank(qvecs, dbvecs, k=k, index=searcher, rerank=rerank)
    if protocol == "labels":
        results = metrics.evaluate_labelled(ranks, gnd, kappas=kappas)
    else:
        results = metrics.evaluate_revisited(ranks, gnd, kappas=kappas)
    if rerank is not None:
        results["rerank"] = rerank.to_dict()
    if searcher is not None:
        results["index"] = {
            "method": searcher.method,
            "options": dict(searcher.options),
            "bytes_per_image": searcher.memory_bytes_per_vector,
            "code_bytes": searcher.code_bytes,
        }
    return (results, ranks) if return_ranks else results


def _shrink(max_side: int | None) -> Callable | None:
    return None if not max_side else (lambda img: resize_long_side(img, max_side, upscale=False))


def describe_test_set(
    extractor: Extractor,
    test_set,
    *,
    max_side: int | None = None,
    cache_dir: str | None = None,
    progress: bool | Callable[[int], None] = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(query descriptors (Q, D), database descriptors (N, D)) of a test set; queries cropped to their box.

    max_side: downscale every image to this long side first (quick CPU runs). cache_dir: keep the database
    description in `cache_dir/index.partial.npz` as it goes (resumed by a rerun with the same model).
    progress: one tqdm bar over queries and database (True), or a callable given finished counts.
    """
    name = getattr(test_set, "name", "test set")
    total = test_set.num_queries + test_set.num_index
    bar = None
    report = progress if callable(progress) else None
    if progress is True and total:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", desc=f"describe {name}", dynamic_ncols=True)
        report = bar.update
    try:
        queries = ImageList(test_set.read_query, test_set.num_queries, _shrink(max_side))
        database = ImageList(test_set.read_index, test_set.num_index, _shrink(max_side))
        qvecs = _describe_all(extractor, queries, f"{name} queries", report)
        partial = os.path.join(cache_dir, "index.partial.npz") if cache_dir else None
        meta = {"model": extractor.fingerprint(), "test_set": name, "num_index": test_set.num_index,
                "max_side": max_side} if partial else None
        dbvecs = _describe_all(extractor, database, f"{name} database", report, partial, meta)
    finally:
        if bar is not None:
            bar.close()
    if partial and os.path.exists(partial):
        os.remove(partial)
    return qvecs, dbvecs


def _describe_all(extractor, images, what, report, partial=None, meta=None) -> np.ndarray:
    if len(images) == 0:
        raise ValueError(f"{what}: no images to describe")
    ids = [str(i) for i in range(len(images))]
    desc, done, failed, _ = describe_resumable(extractor, images, ids, partial=partial, meta=meta,
                                               save_every=20, progress=report or False, on_mismatch="restart")
    if failed:
        listing = "; ".join(f"#{i}: {reason}" for i, reason in failed[:5])
        raise ValueError(f"{what}: {len(failed)} of {len(images)} images could not be described: {listing}")
    if not np.all(np.isfinite(desc)):
        raise ValueError(f"{what}: the model produced non-finite descriptors")
    return desc


def run_eval(
    extractor: Extractor,
    test_set,
    *,
    out_dir: str | None = None,
    max_side: int | None = None,
    grid_queries: int = 4,
    progress: bool | Callable[[int], None] = True,
    distractors: np.ndarray | None = None,
    **eval_options,
) -> dict:
    """Describes the test set with `extractor` and evaluates it (see :func:`evaluate_descriptors`).

    distractors: (M, D) descriptors described beforehand (e.g.
    `remap_jax.describe.descriptor_files.load_features` of a
      sharded extraction), appended to the database after the test set's own index (and its distractors).
    With ``out_dir``: writes ``results.json``, ``descriptors.npz`` and ``topk.png`` there.
    Returns the evaluate_revisited dict (percent) with ``seconds`` (describe + evaluate wall time) added.
    """
    t0 = time.time()
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    qvecs, dbvecs = describe_test_set(extractor, test_set, max_side=max_side, cache_dir=out_dir,
                                      progress=progress)
    scored = test_set
    if distractors is not None:
        distractors = np.asarray(distractors, np.float32)
        if distractors.ndim != 2 or distractors.shape[1] != dbvecs.shape[1]:
            raise ValueError(f"distractors: expected shape (M, {dbvecs.shape[1]}) like the model's "
                             f"descriptors, got {distractors.shape}")
        dbvecs = np.concatenate([dbvecs, distractors])
        scored = test_set.gnd  # the ground truth refers to the test set's own index positions only
    eval_options.setdefault("protocol", getattr(test_set, "protocol", None))
    results, ranks = evaluate_descriptors(qvecs, dbvecs, scored, return_ranks=True, **eval_options)
    results["seconds"] = time.time() - t0
    if getattr(test_set, "report", None):
        results["data_report"] = test_set.report  # your own images: what was skipped and why
    if distractors is not None:
        results["extra_distractors"] = int(len(distractors))
    if out_dir:
        write_results(os.path.join(out_dir, "results.json"), results, name=getattr(test_set, "name", ""))
        atomic.save_npz(os.path.join(out_dir, "descriptors.npz"), queries=qvecs, index=dbvecs)
        if grid_queries > 0:
            save_topk_grid(os.path.join(out_dir, "topk.png"), test_set, ranks, num_queries=grid_queries)
    return results


def validation_map(extractor: Extractor, val_set, *, max_queries: int = 500,
                   progress: bool | Callable[[int], None] = False) -> float:
    """mAP (%) on a training-style split: each query ranks all other images; positives share its label."""
    labels = np.asarray(val_set.labels)
    queries = np.unique(np.asarray(val_set.qidx))[:max_queries]
    vecs = extractor(ImageList(val_set.read, len(labels)), progress=progress)
    ranks = ranking.rank_database(vecs[queries], vecs)
    others = np.arange(len(labels))
    gnd = [{"ok": np.flatnonzero((labels == labels[q]) & (others != q)), "junk": np.array([q])}
           for q in queries]
    return float(metrics.compute_map(ranks, gnd)[0]) * 100.0


def write_results(path: str, results: dict, name: str = "") -> None:
    """Writes evaluate_revisited results as JSON (per-query APs as lists, NaN as null), atomically."""
    atomic.write_json(path, {"dataset": name, **results})


_GREEN, _RED, _GREY, _BLUE = (40, 170, 60), (215, 40, 40), (150, 150, 150), (40, 90, 220)


def save_topk_grid(
    path: str, test_set, ranks: np.ndarray, *, num_queries: int = 4, k: int = 10, thumb: int = 96
) -> None:
    """PNG grid: one row per query (query first, blue), then its top-k; positives (easy or hard) green,
    junk grey, negatives red (Medium setup). Queries are spread evenly over the test set."""
    from PIL import Image, ImageDraw

    nq = test_set.num_queries
    chosen = np.unique(np.linspace(0, nq - 1, min(num_queries, nq)).round().astype(int))
    k = min(k, ranks.shape[0])
    cell, border = thumb + 8, 4
    canvas = Image.new("RGB", (cell * (k + 1) + 6, cell * len(chosen)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    def paste(img, row, col, colour):
        small = resize_long_side(img, thumb - 2 * border)
        x0, y0 = col * cell + (6 if col else 0), row * cell
        draw.rectangle([x0, y0, x0 + thumb - 1, y0 + thumb - 1], fill=colour)
        ox = x0 + (thumb - small.shape[1]) // 2
        oy = y0 + (thumb - small.shape[0]) // 2
        canvas.paste(Image.fromarray(small), (ox, oy))

    for row, q in enumerate(chosen):
        g = test_set.gnd[q]
        positives = set(np.asarray(g["easy"]).tolist()) | set(np.asarray(g["hard"]).tolist())
        junk = set(np.asarray(g["junk"]).tolist())
        paste(test_set.read_query(int(q)), row, 0, _BLUE)
        for col, db in enumerate(ranks[:k, q], start=1):
            db = int(db)
            colour = _GREEN if db in positives else _GREY if db in junk else _RED
            paste(test_set.read_index(db), row, col, colour)
    with atomic.atomic_write(path) as f:
        canvas.save(f, format="PNG")
