"""From label names to sets: integer label ids, matching pairs, the labels held out for validation, and the
revisited-style ground truth of a labelled test set (every image with a positive queries the rest).

Labels are (N,) int64 ids of the images; pairs and ground truth hold image positions. Used for your own
images (:mod:`remap_jax.data.labelled_sets`, :mod:`remap_jax.evaluation.score_files`) and for the pairs of
the synthetic demo dataset.
"""

from __future__ import annotations

import numpy as np

from remap_jax.data.labelled import DataReport, DatasetFileError, Listing, Spec


def label_ids(names) -> tuple[np.ndarray, list[str]]:
    """Label names -> (int64 ids (N,), the sorted names: id k is names[k])."""
    names = [str(n) for n in names]
    vocabulary = sorted(set(names))
    index = {n: k for k, n in enumerate(vocabulary)}
    return np.asarray([index[n] for n in names], np.int64), vocabulary


def positive_pairs(labels: np.ndarray, usable: np.ndarray | None = None, *,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Matching pairs from labels (SfM-120k style): every usable image of a label with >= 2 usable images is a
    query once, paired with a seeded random other usable image of its label. ``usable``: (N,) bool, default
    every image. Returns (qidx, pidx) int64 (P,)."""
    labels = np.asarray(labels, np.int64)
    usable = np.ones(labels.shape, bool) if usable is None else np.asarray(usable, bool)
    rng = np.random.default_rng(seed)
    qidx, pidx = [], []
    for lm in np.unique(labels):
        members = np.flatnonzero((labels == lm) & usable)
        if members.size < 2:
            continue
        for q in members:
            others = members[members != q]
            qidx.append(q)
            pidx.append(others[rng.integers(others.size)])
    return np.asarray(qidx, np.int64), np.asarray(pidx, np.int64)


def held_out_labels(labels: np.ndarray, val, seed: int) -> np.ndarray:
    """The label ids held out for validation: ``val`` < 1 is a fraction of the labels that have >= 2 images
    (rounded), >= 1 a count; drawn with ``seed``. Returns sorted int64 ids."""
    labels = np.asarray(labels, np.int64)
    ids, counts = np.unique(labels, return_counts=True)
    candidates = ids[counts >= 2]
    val = float(val)
    if val < 0 or (val >= 1 and val != int(val)):
        raise ValueError(f"option val={val}: expected a fraction in [0, 1) or a whole number of labels")
    n = int(round(val * len(candidates))) if val < 1 else int(val)
    if n and n > len(candidates) - 1:
        raise ValueError(f"option val={val:g}: {n} validation labels would leave fewer than one of the "
                         f"{len(candidates)} labels with two images for training")
    rng = np.random.default_rng([seed, 7])
    return np.sort(rng.permutation(candidates)[:n])


def single_image_labels(labels: np.ndarray, names: list[str], report: DataReport) -> None:
    """Reports the labels of ``labels`` (ids into ``names``) that have one image."""
    ids, counts = np.unique(np.asarray(labels, np.int64), return_counts=True)
    for k in ids[counts == 1]:
        report.skip("single_image_labels", names[int(k)])


def labelled_ground_truth(labels: np.ndarray, queries: np.ndarray) -> list[dict]:
    """Every query (an image index) against the whole set: positives (``easy``) are the other images of its
    label, the query itself is ``junk`` (ignored), ``hard`` is empty."""
    labels = np.asarray(labels, np.int64)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], labels)
    ends = np.searchsorted(labels[order], labels, side="right")
    gnd = []
    for q in np.asarray(queries, np.int64):
        members = np.sort(order[starts[q]:ends[q]])
        gnd.append({"easy": members[members != q], "hard": np.zeros(0, np.int64), "junk": np.array([q])})
    return gnd


def sample_queries(labels: np.ndarray, num: int | None, seed: int) -> np.ndarray:
    """Indices of the images with a positive (their label has >= 2 images); a seeded sample of ``num``."""
    labels = np.asarray(labels, np.int64)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    candidates = np.flatnonzero(counts[inverse] >= 2)
    if num is not None and num < len(candidates):
        if num < 1:
            raise ValueError(f"option queries={num}: expected >= 1")
        candidates = np.sort(np.random.default_rng([seed, 11]).choice(candidates, num, replace=False))
    return candidates


def test_part(listing: Listing) -> Listing:
    """The rows of split ``test`` when a CSV has any, else the whole listing."""
    if "test" not in listing.splits:
        return listing
    return listing.select([i for i, s in enumerate(listing.splits) if s == "test"])


def labelled_test(image_labels, spec: Spec, report: DataReport) -> tuple[np.ndarray, list[dict]]:
    """(query image indices, ground truth) of a labelled test set whose images have the label names
    ``image_labels``: every image with a positive (or a seeded sample of ``?queries=N``) queries them all
    (:func:`labelled_ground_truth`). Labels with one image are reported; ``report.kept`` gets the counts."""
    labels, names = label_ids(image_labels)
    single_image_labels(labels, names, report)
    queries = sample_queries(labels, spec.option("queries", int, None), spec.option("seed", int, 0))
    if not len(queries):
        raise DatasetFileError(f"{spec.path}: no label has two usable images, so no query has a positive; "
                               "expected at least two images per label")
    report.kept = {"images": int(len(labels)), "labels": len(names), "queries": int(len(queries))}
    return queries, labelled_ground_truth(labels, queries)
