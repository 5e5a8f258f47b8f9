"""Your own images as a :class:`~remap_jax.data.sets.TrainingSet` or :class:`~remap_jax.data.sets.TestSet`:
a labelled ``folder:`` or ``csv:`` (pairs, validation hold-out and ground truth from the labels,
:mod:`remap_jax.data.labels`) or a ``gnd:`` ground-truth JSON (:mod:`remap_jax.data.ground_truth`).

The files are stored once as a ``user_images`` TFDS build (:mod:`remap_jax.data.builders.user_images`) keyed
by the listing's digest, so a changed listing is rebuilt, never read stale; what cannot be used is reported.
"""

from __future__ import annotations

import numpy as np

from remap_jax.data import labelled
from remap_jax.data.ground_truth import read_ground_truth
from remap_jax.data.images import crop_bbox
from remap_jax.data.labels import (
    held_out_labels,
    label_ids,
    labelled_test,
    positive_pairs,
    single_image_labels,
    test_part,
)
from remap_jax.data.records import prepare, read_record, split_source
from remap_jax.data.sets import TestSet, TrainingSet


def _built(kind: str, files: dict, data_dir: str | None, *, labels=(), strict: bool = False):
    """The UserImages build of ``files`` (split -> [(path, id)]), keyed by the listing's digest (paths, sizes,
    mtimes, ids and ``labels``): built on first use, rebuilt whenever a file or the listing changes.
    Returns (the prepared builder, the digest's first 10 hex digits)."""
    from remap_jax.data.builders.user_images import UserImages, UserImagesConfig

    flat = [p for split in sorted(files) for p, _ in files[split]]
    names = [f"{split}:{i}" for split in sorted(files) for _, i in files[split]]
    digest = labelled.listing_digest(kind, flat, list(labels) or [""] * len(flat), names)
    config = UserImagesConfig(name=f"{kind}_{digest[:16]}", files=files, strict=strict)
    builder = prepare(UserImages(data_dir=data_dir, config=config, file_format="array_record"))
    return builder, digest[:10]


def _built_listing(listing: labelled.Listing, kind: str, data_dir: str | None, what: str):
    """(the readable part of ``listing``, reader by its position there, digest); unreadable files are added
    to ``listing.report``."""
    files = {"images": list(zip(listing.paths, listing.ids, strict=True))}
    builder, digest = _built(kind, files, data_dir, labels=listing.labels)
    meta = builder.info.metadata["images"]
    for name, _ in meta["unreadable"]:
        listing.report.skip("unreadable_images", name)
    kept = listing.select(meta["kept"])
    if not len(kept):
        raise labelled.DatasetFileError(f"{listing.source}: none of its {len(listing)} images decodes; "
                                        "expected JPEG, PNG or other image files")
    source = split_source(builder, "images")
    return kept, (lambda i: read_record(source, i, what)), digest


def load_labelled_training_set(name: str, data_dir: str | None = None, *,
                               verbose: bool = True) -> TrainingSet:
    """A training set from a labelled folder or CSV (``folder:PATH[?val=F&seed=S]``, ``csv:PATH``).

    Matching pairs come from the labels (:func:`positive_pairs`); the validation split holds out
    whole labels (the CSV's ``split=val`` rows, else ``val``: a fraction or a count of the labels with two or
    more images, default 0.1). Rows of split ``test`` are left out. ``.report`` (and the printed text) lists
    what was skipped and why.
    """
    spec = labelled.parse_spec(name)
    listing = labelled.list_source(spec)
    report = listing.report
    for i in (i for i, s in enumerate(listing.splits) if s == "test"):
        report.skip("test_rows", listing.ids[i])
    listing = listing.select([i for i, s in enumerate(listing.splits) if s != "test"])
    if not len(listing):
        raise labelled.DatasetFileError(f"{spec.path}: every row is of split test; expected train/val rows")
    kept, read, digest = _built_listing(listing, spec.kind, data_dir, spec.display)
    labels, names = label_ids(kept.labels)
    seed = spec.option("seed", int, 0)
    marked = np.array([s == "val" for s in kept.splits])
    if marked.any():
        if "val" in spec.options:
            raise ValueError(f"{name}: option val: the CSV's split column already names the validation rows")
        is_val = marked
    else:
        is_val = np.isin(labels, held_out_labels(labels, spec.option("val", float, 0.1), seed))

    def subset(positions: np.ndarray, split: str, pair_seed: int) -> TrainingSet:
        sub = labels[positions]
        single_image_labels(sub, names, report)
        qidx, pidx = positive_pairs(sub, seed=pair_seed)
        return TrainingSet(name=f"{spec.display}@{digest}/{split}", labels=sub, qidx=qidx, pidx=pidx,
                           reader=lambda i: read(positions[i]))

    train = subset(np.flatnonzero(~is_val), "train", seed)
    if len(train.qidx) == 0:
        layout = labelled.FOLDER_LAYOUT if spec.kind == "folder" else labelled.CSV_LAYOUT
        raise labelled.DatasetFileError(f"{spec.path}: no label has two readable training images; expected "
                                        f"{layout}, with at least two images per label")
    if is_val.any():
        train.val = subset(np.flatnonzero(is_val), "val", seed + 1)
    report.kept = {"train images": train.num_images, "train labels": int(len(np.unique(train.labels))),
                   "train pairs": int(len(train.qidx))}
    if train.val is not None:
        report.kept.update({"val images": train.val.num_images,
                            "val labels": int(len(np.unique(train.val.labels))),
                            "val pairs": int(len(train.val.qidx))})
    train.report = report.to_dict()
    if verbose:
        print(report.format(), flush=True)
    return train


def load_labelled_test_set(name: str, data_dir: str | None = None, *, verbose: bool = True) -> TestSet:
    """A test set from your own images.

    ``folder:PATH`` / ``csv:PATH[?queries=N&seed=S]``: every image whose label has another image (or a
    seeded sample of N of them) queries the whole set; its positives are its label's other images, itself is
    ignored (protocol "labels": one setup with mAP, mP@k and Recall@k). A CSV with a split column uses its
    ``test`` rows when it has any. ``gnd:FILE.json``: queries, database and ground truth as in
    :func:`read_ground_truth` (protocol "revisited" for easy/hard/junk, else "labels").
    """
    spec = labelled.parse_spec(name)
    if spec.kind == "gnd":
        return _ground_truth_test_set(spec, data_dir)
    listing = test_part(labelled.list_source(spec))
    kept, read, digest = _built_listing(listing, spec.kind, data_dir, spec.display)
    queries, gnd = labelled_test(kept.labels, spec, kept.report)
    if verbose:
        print(kept.report.format(), flush=True)
    return TestSet(
        name=f"{spec.display}@{digest}",
        gnd=gnd,
        query_reader=lambda i: read(queries[i]),
        index_readers=[(len(kept), read)],
        protocol="labels",
        report=kept.report.to_dict(),
    )


def _ground_truth_test_set(spec: labelled.Spec, data_dir: str | None) -> TestSet:
    gt = read_ground_truth(spec.path)
    files = {"query": list(zip(gt["queries"], gt["query_ids"], strict=True)),
             "index": list(zip(gt["database"], gt["database_ids"], strict=True))}
    builder, digest = _built("gnd", files, data_dir, strict=True)
    queries, index = split_source(builder, "query"), split_source(builder, "index")
    gnd = gt["gnd"]

    def read_query(i: int) -> np.ndarray:
        img = read_record(queries, i, f"{spec.display} query")
        return crop_bbox(img, gnd[i]["bbx"]) if "bbx" in gnd[i] else img

    report = labelled.DataReport(spec.display, {"queries": len(queries), "database images": len(index)})
    return TestSet(
        name=f"{spec.display}@{digest}",
        gnd=gnd,
        query_reader=read_query,
        index_readers=[(len(index), lambda i: read_record(index, i, f"{spec.display} database"))],
        original_query_reader=lambda i: read_record(queries, i, f"{spec.display} query"),
        protocol=gt["protocol"],
        report=report.to_dict(),
    )
