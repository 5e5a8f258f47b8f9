"""Evaluate a retrieval model on ROxford5k / RParis6k / synthetic_landmarks (revisited protocol).

    python -m train.eval --checkpoint DIR --dataset roxford5k --out /tmp/eval
    python -m train.eval --arch resnet50 --weights resnet50.safetensors --dataset rparis6k \
        --distractors revisitop1m --qe --out /tmp/eval

prints the Easy/Medium/Hard mAP and mP@1,5,10 table and writes into ``--out``: ``results.json``,
``descriptors.npz`` (query and database vectors) and ``topk.png`` (the top-10 of a few queries: positives
green, negatives red, junk grey; Medium setup).

Library use (the trainer calls these):

* :func:`run_eval` ``(describe_fn, test_set, ...)``: describe_fn maps a list of uint8 (H, W, 3) images to
  an (N, D) array; describes queries (cropped) and the index, then :func:`evaluate_descriptors`.
* :func:`evaluate_descriptors` ``(qvecs, dbvecs, test_set, ...)``: optional alpha-QE / alpha-DBA, ranking by
  :func:`rank_database`, scoring with :func:`remap_jax.evaluate.evaluate_revisited`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from remap_jax import atomic, evaluate

DescribeFn = Callable[[list], np.ndarray]


def rank_database(qvecs, dbvecs, k: int | None = None, *, index=None) -> np.ndarray:
    """Ranks the database for each query -> int64 (num_db or k, num_queries), best first.

    The single ranking step of the evaluation. ``index``: a :class:`remap_jax.index.Index` built over
    ``dbvecs`` (see :func:`build_index`; e.g. ScaNN product-quantised codes); None ranks exactly with numpy.
    """
    if index is None:
        return evaluate.rank_database(qvecs, dbvecs, k=k)
    if len(index) != len(dbvecs):
        raise ValueError(f"index: holds {len(index)} vectors, expected {len(dbvecs)} (one per database row)")
    depth = len(index) if k is None else min(k, len(index))
    positions, _ = index.search_positions(np.asarray(qvecs, np.float32), depth)
    return positions.T.astype(np.int64)


def build_index(dbvecs, method: str = "exact", **options):
    """A :class:`remap_jax.index.Index` over the database rows (ids = row numbers) for :func:`rank_database`.

    ``method``/``options`` as in ``Index.build``: e.g. ``method="scann", pq_bytes=64`` for 64-byte PQ codes,
    ``truncate_dim=d`` for the top-d signatures.
    """
    from remap_jax.index import Index

    return Index.build(np.asarray(dbvecs, np.float32), method=method, **options)


def _gnd_of(test_set_or_gnd) -> list:
    return list(test_set_or_gnd.gnd if hasattr(test_set_or_gnd, "gnd") else test_set_or_gnd)


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
):
    """Scores query/database descriptors under the revisited protocol.

    Args:
      qvecs: (num_queries, D) query descriptors, in the order of ``test_set.gnd``.
      dbvecs: (num_db, D) database descriptors (benchmark index first, then any distractors).
      test_set: a :class:`remap_jax.data.TestSet` or the gnd list itself.
      qe, qe_k, qe_alpha: alpha-query-expansion of the queries (after DBA when both are on).
      dba, dba_k, dba_alpha: alpha-database-side augmentation (quadratic in the database size).
      k: keep only the top k of each ranking (None: the whole database).
      index, index_options: rank through a :class:`remap_jax.index.Index` (``"exact"`` or ``"scann"``, with
        ``Index.build`` options such as ``pq_bytes``) instead of numpy; the results then carry ``index``:
        method, options and ``bytes_per_image`` (code bytes of one database descriptor). QE expands queries
        with the uncompressed database vectors.

    Returns:
      the :func:`remap_jax.evaluate.evaluate_revisited` dict (percent), plus ``ranks`` when asked for.
    """
    gnd = _gnd_of(test_set)
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
        dbvecs = evaluate.alpha_database_augmentation(dbvecs, k=dba_k, alpha=dba_alpha)
    searcher = None if index is None else build_index(dbvecs, index, **(index_options or {}))
    if qe:
        first = rank_database(qvecs, dbvecs, k=max(qe_k, 1), index=searcher)
        qvecs = evaluate.alpha_query_expansion(qvecs, dbvecs, k=qe_k, alpha=qe_alpha, ranks=first)
    ranks = rank_database(qvecs, dbvecs, k=k, index=searcher)
    results = evaluate.evaluate_revisited(ranks, gnd, kappas=kappas)
    if searcher is not None:
        results["index"] = {
            "method": searcher.method,
            "options": dict(searcher.options),
            "bytes_per_image": searcher.code_bytes,
        }
    return (results, ranks) if return_ranks else results


def describe_images(
    describe_fn: DescribeFn,
    read: Callable[[int], np.ndarray],
    num: int,
    *,
    batch_size: int = 16,
    max_side: int | None = None,
    desc: str = "describe",
    cache_path: str | None = None,
    save_every: int = 1000,
) -> np.ndarray:
    """Describes ``num`` images read one by one, in batches -> float32 (num, D); tqdm shows images/s.

    The next batch is read and decoded in a background thread while the current one is described.
    With ``cache_path`` (an ``.npz``), finished rows are saved there atomically about every ``save_every``
    images and a rerun resumes after them, so an interrupted 1M-image run loses no finished work; the file
    is removed once all rows are done.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from remap_jax.data.images import resize_long_side

    if num == 0:
        raise ValueError(f"{desc}: no images to describe")
    out = []
    done = 0

    def load(start):
        images = [read(i) for i in range(start, min(num, start + batch_size))]
        if max_side:
            images = [resize_long_side(im, max_side, upscale=False) for im in images]
        return images

    if cache_path and os.path.exists(cache_path):
        with np.load(cache_path) as cached:
            vecs, cached_num = cached["vecs"].astype(np.float32), int(cached["num"])
        # Resume only if the cache is for this job: same count, and the first images describe the same.
        if cached_num == num and 0 < vecs.shape[0] <= num:
            probe = load(0)[: vecs.shape[0]]
            again = np.asarray(describe_fn(probe), np.float32)
            if again.shape == vecs[: len(probe)].shape and np.allclose(again, vecs[: len(probe)], atol=1e-4):
                out.append(vecs)
                done = vecs.shape[0]

    def save():
        atomic.save_npz(cache_path, vecs=np.concatenate(out), num=num)

    starts = list(range(done, num, batch_size))
    last_saved = done
    with ThreadPoolExecutor(max_workers=1) as pool, tqdm(
        total=num, initial=done, desc=desc, unit="img", disable=num < 2 * batch_size
    ) as bar:
        pending = pool.submit(load, starts[0]) if starts else None
        for n, start in enumerate(starts):
            images = pending.result()
            pending = pool.submit(load, starts[n + 1]) if n + 1 < len(starts) else None
            vecs = np.asarray(describe_fn(images), np.float32)
            if vecs.ndim != 2 or vecs.shape[0] != len(images):
                raise ValueError(
                    f"describe_fn: expected an array of shape ({len(images)}, D), got {vecs.shape}"
                )
            if not np.all(np.isfinite(vecs)):
                raise ValueError(f"describe_fn: non-finite descriptor values for images {start}..")
            out.append(vecs)
            bar.update(len(images))
            if cache_path and start + len(images) - last_saved >= save_every:
                save()
                last_saved = start + len(images)
    if cache_path and os.path.exists(cache_path):
        os.remove(cache_path)
    return np.concatenate(out)


def run_eval(
    describe_fn: DescribeFn,
    test_set,
    *,
    out_dir: str | None = None,
    batch_size: int = 16,
    max_side: int | None = None,
    grid_queries: int = 4,
    **eval_options,
) -> dict:
    """Describes the test set with ``describe_fn`` and evaluates it (see :func:`evaluate_descriptors`).

    With ``out_dir``: writes ``results.json``, ``descriptors.npz`` and ``topk.png`` there.
    Returns the evaluate_revisited dict (percent) with ``seconds`` (describe + evaluate wall time) added.
    """
    t0 = time.time()
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    qvecs = describe_images(
        describe_fn, test_set.read_query, test_set.num_queries, batch_size=batch_size, max_side=max_side,
        desc="queries",
    )
    # A long index description resumes from out_dir/index.partial.npz after an interruption.
    dbvecs = describe_images(
        describe_fn, test_set.read_index, test_set.num_index, batch_size=batch_size, max_side=max_side,
        desc="index", cache_path=os.path.join(out_dir, "index.partial.npz") if out_dir else None,
    )
    results, ranks = evaluate_descriptors(qvecs, dbvecs, test_set, return_ranks=True, **eval_options)
    results["seconds"] = time.time() - t0
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        write_results(os.path.join(out_dir, "results.json"), results, name=getattr(test_set, "name", ""))
        np.savez(os.path.join(out_dir, "descriptors.npz"), queries=qvecs, index=dbvecs)
        if grid_queries > 0:
            save_topk_grid(os.path.join(out_dir, "topk.png"), test_set, ranks, num_queries=grid_queries)
    return results


def write_results(path: str, results: dict, name: str = "") -> None:
    """Writes evaluate_revisited results as JSON (per-query APs as lists, NaN as null)."""

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, np.ndarray):
            return [None if (isinstance(x, float) and math.isnan(x)) else x for x in v.tolist()]
        if isinstance(v, (np.floating, float)):
            return None if math.isnan(float(v)) else float(v)
        if isinstance(v, np.integer):
            return int(v)
        return v

    with atomic.atomic_write(path, "w") as f:
        json.dump({"dataset": name, **clean(results)}, f, indent=1)


_GREEN, _RED, _GREY, _BLUE = (40, 170, 60), (215, 40, 40), (150, 150, 150), (40, 90, 220)


def save_topk_grid(
    path: str, test_set, ranks: np.ndarray, *, num_queries: int = 4, k: int = 10, thumb: int = 96
) -> None:
    """PNG grid: one row per query (query first, blue), then its top-k; positives (easy or hard) green,
    junk grey, negatives red (Medium setup). Queries are spread evenly over the test set."""
    from PIL import Image, ImageDraw

    from remap_jax.data.images import resize_long_side

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


# ---------------------------------------------------------------------------------------------- command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.eval", description=__doc__.split("\n\n")[0])
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="exported model directory (train.main's workdir/export)")
    model.add_argument("--arch", help="backbone for an off-the-shelf model, e.g. resnet50")
    p.add_argument("--weights", help="pretrained backbone weights (.safetensors/.npz/.pth) for --arch")
    p.add_argument("--dataset", required=True, help="roxford5k | rparis6k | synthetic_landmarks[/tiny]")
    p.add_argument("--distractors", default=None, help="revisitop1m or revisitop1m/tars_N")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir (default ~/tensorflow_datasets)")
    p.add_argument("--manual-dir", default=None, help="folder with the downloaded dataset files")
    p.add_argument("--qe", action="store_true", help="alpha-query expansion")
    p.add_argument("--qe-k", type=int, default=2)
    p.add_argument("--qe-alpha", type=float, default=3.0)
    p.add_argument("--dba", action="store_true", help="alpha-database-side augmentation")
    p.add_argument("--dba-k", type=int, default=2)
    p.add_argument("--head", default=None, help="with --arch: remap (default) | rmac | gem | mac | spoc")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="model input size (landscape; portrait images use W H); default: the checkpoint's, "
                   "or 768 1024 with --arch")
    p.add_argument("--resize", choices=("fixed", "long_side"), default=None, help="how images meet the size")
    p.add_argument("--scales", type=float, nargs="+", default=None, help="multi-scale factors, e.g. 1 1.25")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-side", type=int, default=None, help="downscale images to this long side first")
    p.add_argument("--grid-queries", type=int, default=4, help="queries shown in topk.png (0: none)")
    p.add_argument(
        "--index",
        choices=("exact", "scann"),
        default=None,
        help="rank through remap_jax.index (scann: PQ codes) instead of exact numpy ranking",
    )
    p.add_argument("--pq-bytes", type=int, default=None, help="--index scann: PQ code bytes per image")
    p.add_argument("--leaves", type=int, default=None, help="--index scann: k-means tree partitions")
    p.add_argument("--reorder", type=int, default=None, help="--index scann: exactly re-score N candidates")
    p.add_argument("--truncate-dim", type=int, default=None, help="--index: keep the first d dimensions")
    p.add_argument("--out", required=True, help="output folder")
    return p


def make_describe_fn(args) -> DescribeFn:
    """The model as a describe function, through remap_jax.Extractor."""
    from remap_jax import Extractor

    options = {}
    if args.image_size:
        options["image_size"] = tuple(args.image_size)
    if args.resize:
        options["resize"] = args.resize
    if args.scales:
        options["scales"] = tuple(args.scales)
    if args.dtype:
        options["dtype"] = args.dtype
    if args.checkpoint:
        if args.weights or args.head:
            raise SystemExit("--weights and --head go with --arch; a --checkpoint carries its own model")
        return Extractor.from_checkpoint(args.checkpoint, **options)
    if args.head:
        options["head"] = args.head
    return Extractor.from_pretrained(args.arch, weights=args.weights, **options)


def index_options_from_args(args) -> dict | None:
    """``Index.build`` options from --pq-bytes/--leaves/--reorder/--truncate-dim (checked before any work)."""
    given = {
        name: getattr(args, name)
        for name in ("pq_bytes", "leaves", "reorder", "truncate_dim")
        if getattr(args, name, None) is not None
    }
    if args.index != "scann":
        for name in ("pq_bytes", "leaves", "reorder"):
            if name in given:
                raise SystemExit(f"--{name.replace('_', '-')}: only apply with --index scann")
    if args.index is None:
        if "truncate_dim" in given:
            raise SystemExit("--truncate-dim: needs --index exact|scann")
        return None
    return given


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    index_options = index_options_from_args(args)
    from remap_jax.data import load_test_set

    test_set = load_test_set(
        args.dataset, data_dir=args.data_dir, manual_dir=args.manual_dir, distractors=args.distractors
    )
    describe = make_describe_fn(args)
    results = run_eval(
        describe,
        test_set,
        out_dir=args.out,
        batch_size=args.batch_size,
        max_side=args.max_side,
        grid_queries=args.grid_queries,
        qe=args.qe,
        qe_k=args.qe_k,
        qe_alpha=args.qe_alpha,
        dba=args.dba,
        dba_k=args.dba_k,
        index=args.index,
        index_options=index_options,
    )
    extras = [s for s, on in (("alpha-QE", args.qe), ("alpha-DBA", args.dba)) if on]
    if "index" in results:
        info = results["index"]
        extras.append(f"{info['method']} index, {info['bytes_per_image']} bytes/image")
    title = (
        f"{test_set.name}: {test_set.num_queries} queries, {test_set.num_index} database images"
        + (f" ({test_set.num_distractors} distractors)" if test_set.num_distractors else "")
        + (f", {' + '.join(extras)}" if extras else "")
    )
    print(evaluate.format_revisited_table(results, title=title))
    print(f"results, descriptors and top-10 grid in {args.out} ({results['seconds']:.1f} s)")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
