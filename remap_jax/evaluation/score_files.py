"""Features in, scores out: descriptor files written by ``remap-extract`` scored against labels, no model.

    from remap_jax.evaluation.score_files import score_features
    results, report = score_features("test.npz", "folder:/data/products_test")
    results, report = score_features("db.npz", "gnd:/data/bench/gnd.json", queries="q.npz")

Labels come as in :mod:`remap_jax.data.labelled`: a labelled ``folder:`` or ``csv:`` (each image whose label
has another image queries all the others; ``?queries=N&seed=S`` samples N queries) or a ``gnd:`` JSON
(its query list, database and ground truth). Feature rows are matched to images by id: ``remap-extract
--images DIR`` writes paths relative to DIR, which are the listing's ids when DIR is the labelled folder (or
the CSV's / JSON's folder); absolute paths, a CSV's paths as written, and for a ground-truth JSON its names
(with or without extension, or relative to the JSON's folder) match too. Listed images without a descriptor
(e.g. failed to decode at extraction) are skipped and reported; for a ground-truth JSON, whose positions
must hold, they are an error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from remap_jax.data import labelled
from remap_jax.data.ground_truth import read_ground_truth
from remap_jax.data.labels import labelled_test, test_part
from remap_jax.describe.descriptor_files import load_features
from remap_jax.evaluation.benchmark import evaluate_descriptors

__all__ = ["match_rows", "score_features"]


def match_rows(feature_ids: np.ndarray, keys: Sequence[Sequence[str]]) -> np.ndarray:
    """Row of ``feature_ids`` for each entry (its first key that is an id), -1 where none is: int64 (E,)."""
    row_of = {os.path.normpath(str(i)): r for r, i in enumerate(np.asarray(feature_ids).tolist())}
    out = np.full(len(keys), -1, np.int64)
    for e, candidates in enumerate(keys):
        for key in candidates:
            r = row_of.get(os.path.normpath(key))
            if r is not None:
                out[e] = r
                break
    return out


def _keys(listing: labelled.Listing) -> list[list[str]]:
    return [[i, p, os.path.relpath(p, listing.root)] for i, p in zip(listing.ids, listing.paths, strict=True)]


def _gnd_keys(names: list[str], paths: list[str], root: str) -> list[list[str]]:
    return [[n, p, os.path.relpath(p, root), os.path.basename(p), f"{n}.jpg", f"{p}.jpg"]
            for n, p in zip(names, paths, strict=True)]


def _no_match(source: str, feature_ids, example: str) -> labelled.DatasetFileError:
    first = str(np.asarray(feature_ids)[0]) if len(feature_ids) else "(none)"
    return labelled.DatasetFileError(
        f"{source}: no feature id matches an image (feature ids look like {first!r}, the listing's like "
        f"{example!r}); expected ids relative to the labelled folder (remap-extract --images FOLDER) or "
        "absolute paths")


def score_features(features, labels: str, *, queries=None, **eval_options) -> tuple[dict, dict]:
    """Scores descriptor files against labels.

    Args:
      features: feature file(s) / glob pattern(s)
      (:func:`remap_jax.describe.descriptor_files.load_features`): every image.
      labels: ``folder:PATH`` / ``csv:PATH`` (labelled protocol: mAP, mP@k, Recall@k) or ``gnd:FILE.json``.
      queries: with ``gnd:``, feature file(s) of the queries (e.g. extracted cropped to their boxes); default:
        looked up in ``features``.
      eval_options: :func:`remap_jax.evaluation.benchmark.evaluate_descriptors` options (qe, dba, index ...).
    Returns:
      (results as evaluate_descriptors gives them, in percent, the data report as a dict).
    """
    vecs, ids = load_features(features)
    spec = labelled.parse_spec(labels)
    if spec.kind == "gnd":
        gt = read_ground_truth(spec.path, check_files=False)
        root = os.path.dirname(spec.path)
        qvecs, qids = (vecs, ids) if queries is None else load_features(queries)
        qrows = match_rows(qids, _gnd_keys(gt["query_ids"], gt["queries"], root))
        drows = match_rows(ids, _gnd_keys(gt["database_ids"], gt["database"], root))
        for what, rows, names in (("query", qrows, gt["query_ids"]), ("database", drows, gt["database_ids"])):
            missing = [n for n, r in zip(names, rows, strict=True) if r < 0]
            if missing:
                raise labelled.DatasetFileError(
                    f"{spec.path}: {len(missing)} of {len(names)} {what} images have no descriptor in the "
                    f"feature files (e.g. {missing[:3]}); the ground truth refers to every image by position")
        report = labelled.DataReport(spec.display, {"queries": len(qrows), "database images": len(drows)})
        results = evaluate_descriptors(qvecs[qrows], vecs[drows], gt["gnd"], protocol=gt["protocol"],
                                       **eval_options)
        return results, report.to_dict()

    listing = test_part(labelled.list_source(spec, check_files=False))
    report = listing.report
    rows = match_rows(ids, _keys(listing))
    if not (rows >= 0).any():
        raise _no_match(spec.display, ids, listing.ids[0])
    for i in np.flatnonzero(rows < 0):
        report.skip("missing_features", listing.ids[i])
    for r in np.setdiff1d(np.arange(len(ids)), rows[rows >= 0]):
        report.skip("unlisted_features", str(ids[r]))
    kept = listing.select(np.flatnonzero(rows >= 0))
    db = vecs[rows[rows >= 0]]
    query_images, gnd = labelled_test(kept.labels, spec, report)
    results = evaluate_descriptors(db[query_images], db, gnd, protocol="labels", **eval_options)
    return results, report.to_dict()
