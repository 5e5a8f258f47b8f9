"""Training images: decoded, resized uint8 images of a dataset by index, loaded in threads, optionally cached.

This feeds the train step's tuples (every image squashed to `config.image_size`, like the paper's training).
Images come through the Extractor's input pipeline (`remap_jax.describe.pipeline`): the same
`Resizing.prepare` decodes and resizes them (`resize="exact"`; encoded JPEGs at least twice `size` are
decoded at a reduced scale by the JPEG decoder, `draft=False`: every pixel; grayscale, CMYK and palette
images are converted to RGB) and the same `read_ahead` reads them in threads. Describing images (mining,
validation, evaluation) goes through `remap_jax.Extractor`, which reads through `ImageSource.read` so cached
images are decoded once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from remap_jax.describe.pipeline import Resizing, read_ahead


class ImageSource:
    """uint8 (H, W, 3) images of a dataset by index, resized to `size`, decoded in `workers` threads.

    Args:
      read: i -> the encoded image (bytes, e.g. `TrainingSet.read_stored`) or a uint8 (H, W, 3) array.
      size: (height, width) every image is resized to (static shapes under jit).
      cache: keep resized images in memory (small datasets).
      workers: decoding threads.
      draft: JPEG draft decoding for sources at least twice `size` (see `decode_resized`).
      exif_transpose: apply EXIF orientation tags of encoded images (False for datasets, whose boxes and
        pairs refer to the stored pixels).
    """

    def __init__(self, read: Callable[[int], np.ndarray | bytes], size: Sequence[int], *,
                 cache: bool = False, workers: int = 4, draft: bool = True, exif_transpose: bool = True):
        self._read = read
        self.size = (int(size[0]), int(size[1]))
        self.resizing = Resizing(self.size, "exact", draft=bool(draft), exif_transpose=bool(exif_transpose))
        self._cache: dict[int, np.ndarray] | None = {} if cache else None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="remap-decode")
        # Prefetched batches run `get` on their own thread: on the decoding pool, `get` would wait for its
        # own per-image tasks queued behind it (a deadlock with workers=1).
        self._prefetcher = ThreadPoolExecutor(max_workers=1)

    def read(self, i: int) -> np.ndarray:
        """Image i at `size` (from the cache when it is there)."""
        i = int(i)
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        _, (img,) = self.resizing.prepare(self._read(i))
        if self._cache is not None:
            self._cache[i] = img
        return img

    def get(self, ids: np.ndarray) -> np.ndarray:
        """uint8 (*ids.shape, H, W, 3)."""
        ids = np.asarray(ids)
        flat = ids.ravel().tolist()
        images = [future.result() for _, future in read_ahead(self._pool, self.read, flat, window=len(flat))]
        return np.stack(images).reshape(ids.shape + self.size + (3,))

    def prefetch(self, ids: np.ndarray):
        """Start loading `ids` in the background; `.result()` gives `get(ids)`."""
        return self._prefetcher.submit(self.get, ids)

    def close(self) -> None:
        self._prefetcher.shutdown(wait=False)
        self._pool.shutdown(wait=False)
