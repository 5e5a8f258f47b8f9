"""Loading a dataset by name: :func:`load_training_set` and :func:`load_test_set`.

``load_training_set("sfm120k" | "gldv2_clean[/tars_N]" | "synthetic_landmarks[/tiny]")`` and
``load_test_set("roxford5k" | "rparis6k" | "synthetic_landmarks[/tiny]", distractors="revisitop1m[/tars_N]")``
build the TFDS dataset on first use (:mod:`remap_jax.data.records`) and read labels, pairs and ground truth
from its metadata; ``folder:``, ``csv:`` and ``gnd:`` names are your own images
(:mod:`remap_jax.data.labelled_sets`).
"""

from __future__ import annotations

import numpy as np

from remap_jax.data import labelled
from remap_jax.data.labelled_sets import load_labelled_test_set, load_labelled_training_set
from remap_jax.data.records import base_name, get_builder, prepare, read_record, split_source
from remap_jax.data.sets import TestSet, TrainingSet

TRAINING_SETS = ("sfm120k", "gldv2_clean", "synthetic_landmarks")
TEST_SETS = ("roxford5k", "rparis6k", "synthetic_landmarks")
DISTRACTOR_SETS = ("revisitop1m",)


def _metadata_split(builder, split: str) -> dict:
    meta = builder.info.metadata
    if meta is None or split not in meta:
        raise ValueError(
            f"{builder.info.full_name}: expected labels and pairs for split {split!r} in its metadata "
            f"(rebuild the dataset), found keys {list(meta or {})}"
        )
    return meta[split]


def _training_split(builder, name: str, split: str) -> TrainingSet:
    meta = _metadata_split(builder, split)
    source = split_source(builder, split)
    labels = np.asarray(meta["labels"], np.int64)
    if len(source) != labels.shape[0]:
        raise ValueError(
            f"{name}/{split}: {len(source)} records but {labels.shape[0]} labels in the metadata"
        )
    return TrainingSet(
        name=f"{name}/{split}",
        labels=labels,
        qidx=np.asarray(meta["qidx"], np.int64),
        pidx=np.asarray(meta["pidx"], np.int64),
        reader=lambda i: read_record(source, i, f"{name}/{split}"),
        stored_reader=lambda i: read_record(source, i, f"{name}/{split}", decode=False),
    )


def load_training_set(
    name: str, data_dir: str | None = None, manual_dir: str | None = None, synthetic_config=None
) -> TrainingSet:
    """Loads (building on first use) a training set: sfm120k, gldv2_clean[/config], synthetic_landmarks, or
    your own images: ``folder:PATH`` / ``csv:PATH`` (:mod:`remap_jax.data.labelled`).

    Returns the ``train`` split with ``.val`` set to the validation split when the dataset has one.
    """
    if labelled.is_spec(name):
        return load_labelled_training_set(name, data_dir)
    if base_name(name) not in TRAINING_SETS:
        raise ValueError(f"name: expected one of {TRAINING_SETS} (optionally /config), got {name!r}")
    builder = prepare(get_builder(name, data_dir, synthetic_config), manual_dir)
    train = _training_split(builder, name, "train")
    if "val" in builder.info.splits:
        train.val = _training_split(builder, name, "val")
    return train


def _gnd_from_metadata(builder) -> list[dict]:
    meta = builder.info.metadata
    if meta is None or "gnd" not in meta:
        raise ValueError(
            f"{builder.info.full_name}: expected ground truth 'gnd' in its metadata (rebuild the dataset)"
        )
    return [
        {
            "easy": np.asarray(g["easy"], np.int64),
            "hard": np.asarray(g["hard"], np.int64),
            "junk": np.asarray(g["junk"], np.int64),
            "bbx": np.asarray(g["bbx"], np.float64),
        }
        for g in meta["gnd"]
    ]


def load_test_set(
    name: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    distractors: str | None = None,
    synthetic_config=None,
) -> TestSet:
    """Loads (building on first use) a test set: roxford5k, rparis6k, synthetic_landmarks[/config], or your
    own images: ``folder:PATH`` / ``csv:PATH`` (each image queries the rest) or ``gnd:FILE.json``.

    ``distractors="revisitop1m"`` (or ``"revisitop1m/tars_1"`` ...) appends the 1M distractors to the index.
    """
    if labelled.is_spec(name):
        test = load_labelled_test_set(name, data_dir)
        if distractors:
            raise ValueError(f"distractors: only for the built-in benchmarks; put distractors in {name} "
                             "as labels with one image")
        return test
    if base_name(name) not in TEST_SETS:
        raise ValueError(f"name: expected one of {TEST_SETS} (optionally /config), got {name!r}")
    builder = prepare(get_builder(name, data_dir, synthetic_config), manual_dir)
    gnd = _gnd_from_metadata(builder)
    queries = split_source(builder, "query")
    index = split_source(builder, "index")
    if len(queries) != len(gnd):
        raise ValueError(f"{name}: {len(queries)} query records but {len(gnd)} ground-truth entries")
    test = TestSet(
        name=name,
        gnd=gnd,
        query_reader=lambda i: read_record(queries, i, f"{name}/query"),
        index_readers=[(len(index), lambda i: read_record(index, i, f"{name}/index"))],
        original_query_reader=lambda i: read_record(queries, i, f"{name}/query", field="original_image"),
    )
    if distractors:
        if base_name(distractors) not in DISTRACTOR_SETS:
            raise ValueError(f"distractors: expected one of {DISTRACTOR_SETS}, got {distractors!r}")
        dbuilder = prepare(get_builder(distractors, data_dir), manual_dir)
        dsource = split_source(dbuilder, "index")
        test = test.with_distractors(len(dsource), lambda i: read_record(dsource, i, distractors),
                                     distractors)
    return test
