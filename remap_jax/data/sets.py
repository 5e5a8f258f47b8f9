"""Random-access views of the built datasets: :class:`TrainingSet` and :class:`TestSet`.

``load_training_set("sfm120k" | "gldv2_clean[/tars_N]" | "synthetic_landmarks[/tiny]")`` and
``load_test_set("roxford5k" | "rparis6k" | "synthetic_landmarks[/tiny]", distractors="revisitop1m[/tars_N]")``
build the TFDS dataset on first use (array_record files under ``data_dir``, default
``~/tensorflow_datasets``), then read records by index through ``builder.as_data_source``. Images are
decoded with :func:`remap_jax.data.images.load_rgb` as stored (no EXIF rotation: the benchmark boxes
refer to the stored pixels).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable

import numpy as np

from remap_jax.data import labelled
from remap_jax.data.images import crop_bbox, load_rgb
from remap_jax.runtime.extras import require

TRAINING_SETS = ("sfm120k", "gldv2_clean", "synthetic_landmarks")
TEST_SETS = ("roxford5k", "rparis6k", "synthetic_landmarks")
DISTRACTOR_SETS = ("revisitop1m",)


def _tfds():
    return require("tensorflow_datasets", "data", "the TFDS datasets (remap_jax.data)")


def _base_name(name: str) -> str:
    return name.split("/", 1)[0].split(":", 1)[0]


def get_builder(name: str, data_dir: str | None = None, synthetic_config=None):
    """The TFDS builder for ``name`` (``"dataset"`` or ``"dataset/config"``), array_record file format.

    ``revisitop1m/tars_N`` and ``gldv2_clean/tars_N`` build the first N image tars, for any N.
    ``synthetic_config``: a :class:`remap_jax.data.synthetic.SyntheticConfig` for a custom-sized
    synthetic_landmarks (its config name is derived from the values, so different settings never collide).
    """
    tfds = _tfds()

    from remap_jax.data import builders

    if synthetic_config is not None:
        if _base_name(name) != "synthetic_landmarks":
            raise ValueError(f"synthetic_config: only valid for synthetic_landmarks, got dataset {name!r}")
        digest = hashlib.sha1(
            json.dumps(dataclasses.asdict(synthetic_config), sort_keys=True).encode()
        ).hexdigest()[:10]
        config = builders.SyntheticLandmarksConfig(name=f"custom_{digest}", synthetic=synthetic_config)
        return builders.SyntheticLandmarks(data_dir=data_dir, config=config, file_format="array_record")
    base, _, config_name = name.partition("/")
    prefix_builders = {"revisitop1m": builders.Revisitop1m, "gldv2_clean": builders.Gldv2Clean}
    match = re.fullmatch(r"tars_(\d+)", config_name)
    if base in prefix_builders and match:
        cls = prefix_builders[base]
        if config_name not in cls.builder_configs:  # any prefix, not only the predefined ones
            config = builders.TarPrefixConfig(name=config_name, num_tars=int(match.group(1)))
            return cls(data_dir=data_dir, config=config, file_format="array_record")
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")


def prepare(builder, manual_dir: str | None = None):
    """Builds the dataset files if they are not there yet (download or manual_dir, see the builders)."""
    tfds = _tfds()

    if not builder.is_prepared():
        config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
        builder.download_and_prepare(download_config=config)
    return builder


def _source(builder, split: str):
    tfds = _tfds()

    if split not in builder.info.splits:
        raise ValueError(
            f"split: {builder.info.full_name} has splits {list(builder.info.splits)}, not {split!r}"
        )
    decoders = {"image": tfds.decode.SkipDecoding()}
    return builder.as_data_source(split, decoders=decoders)


def _read(source, i: int, what: str, field: str = "image", decode: bool = True) -> np.ndarray | bytes:
    """Record i's image: decoded (uint8 (H, W, 3), as stored: no EXIF rotation), or its encoded bytes."""
    n = len(source)
    if not -n <= int(i) < n:
        raise IndexError(f"{what}: index {i} out of range for {n} images")
    data = source[int(i)][field]
    return load_rgb(data, exif_transpose=False) if decode else bytes(data)


@dataclasses.dataclass
class TrainingSet:
    """Training images with landmark/cluster labels and query/positive pairs.

    Attributes:
      name: dataset name.
      labels: (N,) int64 landmark or 3D-cluster id per image.
      qidx, pidx: (P,) int64 query and positive image indices (pairs of the same landmark).
      val: the validation split in the same form, or None.
    """

    name: str
    labels: np.ndarray
    qidx: np.ndarray
    pidx: np.ndarray
    reader: Callable[[int], np.ndarray] = dataclasses.field(repr=False)
    val: TrainingSet | None = None
    stored_reader: Callable[[int], np.ndarray | bytes] | None = dataclasses.field(default=None, repr=False)
    report: dict | None = None  # your own images: what was skipped and why (labelled.DataReport.to_dict)

    @property
    def num_images(self) -> int:
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        return self.num_images

    def read(self, i: int) -> np.ndarray:
        """Image i as uint8 (H, W, 3)."""
        return self.reader(i)

    def read_stored(self, i: int) -> np.ndarray | bytes:
        """Image i as stored: its encoded bytes (decode with ``exif_transpose=False``), or `read(i)` for a set
        without files. What training decodes, so large JPEGs get draft decoding (`decode_resized`)."""
        return self.reader(i) if self.stored_reader is None else self.stored_reader(i)


@dataclasses.dataclass
class TestSet:
    """A retrieval benchmark: queries, an index (optionally with distractors) and revisited ground truth.

    ``gnd[q]`` has ``easy``, ``hard``, ``junk`` (int64 index positions) and ``bbx`` (x0, y0, x1, y1) of
    query q in its original image. Distractors are appended after the index images, so gnd positions are
    unchanged.
    """

    name: str
    gnd: list[dict]
    query_reader: Callable[[int], np.ndarray] = dataclasses.field(repr=False)
    index_readers: list[tuple[int, Callable[[int], np.ndarray]]] = dataclasses.field(repr=False)
    original_query_reader: Callable[[int], np.ndarray] | None = dataclasses.field(default=None, repr=False)
    num_distractors: int = 0
    # "revisited": Easy/Medium/Hard setups; "labels": one setup ("all", positives = easy + hard) with Recall@k
    protocol: str = "revisited"
    report: dict | None = None  # your own images: what was skipped and why (labelled.DataReport.to_dict)

    @property
    def num_queries(self) -> int:
        return len(self.gnd)

    @property
    def num_index(self) -> int:
        return sum(n for n, _ in self.index_readers)

    def read_query(self, i: int, crop: bool = True) -> np.ndarray:
        """Query i as uint8 (H, W, 3), cropped to its box (``crop=False``: the whole original image)."""
        if not 0 <= int(i) < self.num_queries:
            raise IndexError(f"query: index {i} out of range for {self.num_queries} queries")
        if crop or self.original_query_reader is None:
            return self.query_reader(i)
        return self.original_query_reader(i)

    def read_index(self, i: int) -> np.ndarray:
        """Database image i as uint8 (H, W, 3); positions >= the benchmark's index size are distractors."""
        i = int(i)
        if not 0 <= i < self.num_index:
            raise IndexError(f"index: position {i} out of range for {self.num_index} database images")
        for n, reader in self.index_readers:
            if i < n:
                return reader(i)
            i -= n
        raise AssertionError("unreachable")

    def with_distractors(self, num: int, reader: Callable[[int], np.ndarray], name: str = "") -> TestSet:
        """A copy whose index has ``num`` more images (read by ``reader``) appended as distractors."""
        return dataclasses.replace(
            self,
            name=f"{self.name}+{name}" if name else self.name,
            index_readers=list(self.index_readers) + [(int(num), reader)],
            num_distractors=self.num_distractors + int(num),
        )


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
    source = _source(builder, split)
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
        reader=lambda i: _read(source, i, f"{name}/{split}"),
        stored_reader=lambda i: _read(source, i, f"{name}/{split}", decode=False),
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
    if _base_name(name) not in TRAINING_SETS:
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
    if _base_name(name) not in TEST_SETS:
        raise ValueError(f"name: expected one of {TEST_SETS} (optionally /config), got {name!r}")
    builder = prepare(get_builder(name, data_dir, synthetic_config), manual_dir)
    gnd = _gnd_from_metadata(builder)
    queries = _source(builder, "query")
    index = _source(builder, "index")
    if len(queries) != len(gnd):
        raise ValueError(f"{name}: {len(queries)} query records but {len(gnd)} ground-truth entries")
    test = TestSet(
        name=name,
        gnd=gnd,
        query_reader=lambda i: _read(queries, i, f"{name}/query"),
        index_readers=[(len(index), lambda i: _read(index, i, f"{name}/index"))],
        original_query_reader=lambda i: _read(queries, i, f"{name}/query", field="original_image"),
    )
    if distractors:
        if _base_name(distractors) not in DISTRACTOR_SETS:
            raise ValueError(f"distractors: expected one of {DISTRACTOR_SETS}, got {distractors!r}")
        dbuilder = prepare(get_builder(distractors, data_dir), manual_dir)
        dsource = _source(dbuilder, "index")
        test = test.with_distractors(len(dsource), lambda i: _read(dsource, i, distractors), distractors)
    return test


# ------------------------------------------------------------------------------------- your own images


def _built(kind: str, files: dict, data_dir: str | None, *, labels=(), strict: bool = False):
    """The UserImages build of ``files`` (split -> [(path, id)]), keyed by the listing's digest (paths, sizes,
    mtimes, ids and ``labels``): built on first use, rebuilt whenever a file or the listing changes.
    Returns (the prepared builder, the digest's first 10 hex digits)."""
    from remap_jax.data import builders

    flat = [p for split in sorted(files) for p, _ in files[split]]
    names = [f"{split}:{i}" for split in sorted(files) for _, i in files[split]]
    digest = labelled.listing_digest(kind, flat, list(labels) or [""] * len(flat), names)
    config = builders.UserImagesConfig(name=f"{kind}_{digest[:16]}", files=files, strict=strict)
    builder = prepare(builders.UserImages(data_dir=data_dir, config=config, file_format="array_record"))
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
    source = _source(builder, "images")
    return kept, (lambda i: _read(source, i, what)), digest


def load_labelled_training_set(name: str, data_dir: str | None = None, *,
                               verbose: bool = True) -> TrainingSet:
    """A training set from a labelled folder or CSV (``folder:PATH[?val=F&seed=S]``, ``csv:PATH``).

    Matching pairs come from the labels (:func:`labelled.positive_pairs`); the validation split holds out
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
    labels, names = labelled.label_ids(kept.labels)
    seed = spec.option("seed", int, 0)
    marked = np.array([s == "val" for s in kept.splits])
    if marked.any():
        if "val" in spec.options:
            raise ValueError(f"{name}: option val: the CSV's split column already names the validation rows")
        is_val = marked
    else:
        is_val = np.isin(labels, labelled.held_out_labels(labels, spec.option("val", float, 0.1), seed))

    def subset(positions: np.ndarray, split: str, pair_seed: int) -> TrainingSet:
        sub = labels[positions]
        labelled.single_image_labels(sub, names, report)
        qidx, pidx = labelled.positive_pairs(sub, pair_seed)
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
    :func:`labelled.read_ground_truth` (protocol "revisited" for easy/hard/junk, else "labels").
    """
    spec = labelled.parse_spec(name)
    if spec.kind == "gnd":
        return _ground_truth_test_set(spec, data_dir)
    listing = labelled.test_part(labelled.list_source(spec))
    kept, read, digest = _built_listing(listing, spec.kind, data_dir, spec.display)
    queries, gnd = labelled.labelled_test(kept.labels, spec, kept.report)
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
    gt = labelled.read_ground_truth(spec.path)
    files = {"query": list(zip(gt["queries"], gt["query_ids"], strict=True)),
             "index": list(zip(gt["database"], gt["database_ids"], strict=True))}
    builder, digest = _built("gnd", files, data_dir, strict=True)
    queries, index = _source(builder, "query"), _source(builder, "index")
    gnd = gt["gnd"]

    def read_query(i: int) -> np.ndarray:
        img = _read(queries, i, f"{spec.display} query")
        return crop_bbox(img, gnd[i]["bbx"]) if "bbx" in gnd[i] else img

    report = labelled.DataReport(spec.display, {"queries": len(queries), "database images": len(index)})
    return TestSet(
        name=f"{spec.display}@{digest}",
        gnd=gnd,
        query_reader=read_query,
        index_readers=[(len(index), lambda i: _read(index, i, f"{spec.display} database"))],
        original_query_reader=lambda i: _read(queries, i, f"{spec.display} query"),
        protocol=gt["protocol"],
        report=report.to_dict(),
    )
