"""Random-access views of a dataset: :class:`TrainingSet` (labelled images and matching pairs) and
:class:`TestSet` (a retrieval benchmark: queries, index, revisited ground truth). They read images through
callables, so one type serves the built-in TFDS datasets (:mod:`remap_jax.data.loaders`) and your own images
(:mod:`remap_jax.data.labelled_sets`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


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
