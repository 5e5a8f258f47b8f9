"""The input pipeline of every model input: decode, resize to static shapes, read ahead in threads, batch.

Both the Extractor (description: extraction, evaluation, mining, validation) and training
(`train.input.ImageSource`, the images of the train step's tuples) read their images through this module,
so JPEG draft decoding, EXIF orientation, grayscale/CMYK/palette conversion and the resize are one code
path:

* `Resizing.prepare`: one source (a path, encoded bytes or a uint8 (H, W, 3) array) -> checked, decoded
  (`remap_jax.data.images.decode_resized`: JPEGs at least twice the target size are decoded at 1/2, 1/4
  or 1/8 scale by the JPEG decoder unless `draft=False`), cropped to an optional bbox and resized to every
  scale's static shape.
* static shapes (`target_size`): images of any size and orientation are resized to a few shapes so only
  those are ever compiled. `resize="fixed"` (the paper's setting) uses `image_size` = (height, width) for
  landscape images and (width, height) for portrait ones (1024x768 / 768x1024); `resize="long_side"` keeps
  the aspect ratio: the long side becomes max(image_size) and the short side is rounded to a multiple of
  `bucket`; `resize="exact"` resizes every image to `image_size` whatever its orientation (how training
  images are fed).
* `read_ahead`: work on the items of a sequence submitted to a thread pool a window ahead of the consumer,
  results in input order.
* `host_batches`: prepared images of one static shape stacked into zero-padded uint8 batches of
  `batch_size` (pixels stay uint8; the model normalises them on the device); inputs that cannot be read
  (unreadable file, bad array, empty crop) become `Failed` records instead of stopping the run.
* `device_batches`: host batches copied to the device `prefetch` batches ahead of their use.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from remap_jax.data.images import ImageDecodeError, decode_resized
from remap_jax.model import scaled_size

__all__ = ["Failed", "HostBatch", "RESIZE_MODES", "Resizing", "device_batches", "host_batches", "read_ahead",
           "target_size"]

RESIZE_MODES = ("fixed", "long_side", "exact")

#: What makes an input `Failed` rather than stopping the run.
INPUT_ERRORS = (ImageDecodeError, ValueError, OSError)


class Failed(NamedTuple):
    """An input that could not be described (unreadable file, bad array, empty crop) and why."""

    index: int
    reason: str


class HostBatch(NamedTuple):
    """Input positions `indices` (count of them), one zero-padded uint8 (batch_size, h, w, 3) array per
    scale (host arrays, or device arrays after `device_batches`) and the static (height, width) `size`."""

    indices: list[int]
    count: int
    batches: tuple
    size: tuple[int, int]


def target_size(
    height: int, width: int, image_size: Sequence[int] = (768, 1024), resize: str = "fixed", bucket: int = 64
) -> tuple[int, int]:
    """The (height, width) an image of `height` x `width` pixels is resized to before description.

    fixed: `image_size` = (h, w) for landscape/square images, (w, h) for portrait ones.
    long_side: long side = max(image_size), short side = the aspect-preserving length rounded to a multiple of
    `bucket` (at least `bucket`, at most the long side), orientation kept.
    exact: `image_size` as given, whatever the image's orientation.
    """
    if resize == "fixed":
        h, w = int(image_size[0]), int(image_size[1])
        landscape = (min(h, w), max(h, w))
        return landscape if width >= height else landscape[::-1]
    if resize == "long_side":
        long = max(int(v) for v in image_size)
        short = min(height, width) / max(height, width) * long
        short = int(min(long, max(bucket, round(short / bucket) * bucket)))
        return (short, long) if width >= height else (long, short)
    if resize == "exact":
        return int(image_size[0]), int(image_size[1])
    raise ValueError(f"resize: expected one of {RESIZE_MODES}, got {resize!r}")


@dataclasses.dataclass(frozen=True)
class Resizing:
    """How one source becomes model input: the static shape rule (`target_size`) and multi-scale factors,
    JPEG draft decoding and EXIF orientation (see `decode_resized`)."""

    image_size: tuple[int, int]
    resize: str = "fixed"
    bucket: int = 64
    scales: tuple[float, ...] = (1.0,)
    draft: bool = True
    exif_transpose: bool = True

    def size_of(self, height: int, width: int) -> tuple[int, int]:
        """The static (height, width) of a `height` x `width` source at scale 1."""
        return target_size(height, width, self.image_size, self.resize, self.bucket)

    def sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Every scale's (height, width) for a `height` x `width` source."""
        size = self.size_of(height, width)
        return [scaled_size(size, s) for s in self.scales]

    def prepare(self, source: Any, bbox: Sequence[float] | None = None
                ) -> tuple[tuple[int, int], tuple[np.ndarray, ...]]:
        """(static size at scale 1, one uint8 (h, w, 3) image per scale) of a path, encoded bytes or uint8
        (H, W, 3) array, cropped to `bbox` (x0, y0, x1, y1) first. Raises ImageDecodeError, ValueError or
        OSError for an input that cannot be read."""
        if isinstance(source, np.ndarray):
            if source.ndim != 3 or source.shape[-1] != 3 or source.dtype != np.uint8 or 0 in source.shape:
                raise ValueError(f"expected a uint8 (H, W, 3) array, got {source.dtype} {source.shape}")
        decoded = decode_resized(source, self.sizes, bbox=bbox, draft=self.draft,
                                 exif_transpose=self.exif_transpose)
        return self.size_of(*decoded.source_size), decoded.images


def read_ahead(pool: concurrent.futures.Executor, work: Callable[[Any], Any], items: Iterable,
               window: int) -> Iterator[tuple[Any, concurrent.futures.Future]]:
    """(item, future of `work(item)`) in the order of `items`, `work` running on `pool` for up to `window`
    items ahead of the consumer."""
    queue: collections.deque = collections.deque()
    todo = iter(items)
    end = object()

    def refill():
        while len(queue) < window:
            item = next(todo, end)
            if item is end:
                return
            queue.append((item, pool.submit(work, item)))

    refill()
    while queue:
        item, future = queue.popleft()
        refill()
        yield item, future


def host_batches(sources: Sequence[Any], bboxes: Sequence[Any] | None, todo: Iterable[int],
                 resizing: Resizing, *, batch_size: int, workers: int, prefetch: int
                 ) -> Iterator[HostBatch | Failed]:
    """Positions `todo` of `sources` prepared in `workers` threads (reading a lazy sequence's items there
    too), stacked per static shape into zero-padded batches of `batch_size` as soon as a shape has that
    many; the partial batches at the end. Inputs that cannot be read come back as `Failed`."""
    window = max(2 * batch_size * (prefetch + 1), 2 * workers)
    buckets: dict[tuple[int, int], list] = {}

    def prepare(i):
        return resizing.prepare(sources[i], None if bboxes is None else bboxes[i])

    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="remap-decode") as pool:
        for i, future in read_ahead(pool, prepare, todo, window):
            try:
                size, arrays = future.result()
            except INPUT_ERRORS as e:
                yield Failed(i, str(e))
                continue
            bucket = buckets.setdefault(size, [])
            bucket.append((i, arrays))
            if len(bucket) == batch_size:
                yield _stack(buckets.pop(size), size, batch_size)
        for size, bucket in buckets.items():
            yield _stack(bucket, size, batch_size)


def _stack(bucket: list, size: tuple[int, int], batch_size: int) -> HostBatch:
    batches = []
    for s in range(len(bucket[0][1])):
        stacked = np.zeros((batch_size, *bucket[0][1][s].shape), np.uint8)  # zero-padded tail
        for row, (_, arrays) in enumerate(bucket):
            stacked[row] = arrays[s]
        batches.append(stacked)
    return HostBatch([i for i, _ in bucket], len(bucket), tuple(batches), size)


def device_batches(batches: Iterable[HostBatch | Failed], sharding: jax.sharding.Sharding,
                   prefetch: int) -> Iterator[HostBatch | Failed]:
    """`batches` with their arrays copied to `sharding`, `prefetch` batches ahead of their use; `Failed`
    records pass through at once."""
    queue: collections.deque = collections.deque()
    for item in batches:
        if isinstance(item, Failed):
            yield item
            continue
        queue.append(item._replace(batches=jax.device_put(item.batches, sharding)))
        if len(queue) > prefetch:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
