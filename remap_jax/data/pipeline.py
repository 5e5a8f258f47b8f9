"""Input pipeline: batches of decoded, resized, ImageNet-normalised images (grain), deterministic by seed,
with a checkpointable iterator state.

    ds = image_batches(train_set.read, train_set.num_images, image_size=(224, 224), batch_size=32, seed=0)
    it = iter(ds)
    batch = next(it)             # {"images": float32 (32, 224, 224, 3), "index": int64 (32,), "valid": bool}
    state = it.get_state()       # a small dict: save it with the model checkpoint
    it.set_state(state)          # ... and restore it to continue exactly where it stopped

Shapes are static (every batch has ``batch_size`` rows), so a jitted model never recompiles. For extraction
(``shuffle=False, num_epochs=1``) the last batch is padded by repeating its last image, with ``valid``
marking the real rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from remap_jax.data.images import crop_bbox, normalize, resize_to

RESIZE_MODES = ("squash", "pad", "crop")


def fit_image(img: np.ndarray, size: Sequence[int], mode: str = "squash") -> np.ndarray:
    """Brings a uint8 (H, W, 3) image to exactly ``size = (height, width)``.

    Modes: ``squash`` resizes to the size (aspect ratio not kept); ``pad`` resizes so the image fits inside
    and pads bottom/right with the ImageNet mean colour (zero after normalisation); ``crop`` resizes so the
    image covers the size and takes the centre crop.
    """
    h, w = int(size[0]), int(size[1])
    if mode == "squash":
        return resize_to(img, (h, w))
    if mode == "pad":
        scale = min(h / img.shape[0], w / img.shape[1])
        nh, nw = max(1, min(h, round(img.shape[0] * scale))), max(1, min(w, round(img.shape[1] * scale)))
        small = resize_to(img, (nh, nw))
        out = np.empty((h, w, 3), np.uint8)
        out[:] = np.round(np.array([0.485, 0.456, 0.406]) * 255).astype(np.uint8)
        out[:nh, :nw] = small
        return out
    if mode == "crop":
        scale = max(h / img.shape[0], w / img.shape[1])
        nh, nw = max(h, round(img.shape[0] * scale)), max(w, round(img.shape[1] * scale))
        big = resize_to(img, (nh, nw))
        y0, x0 = (nh - h) // 2, (nw - w) // 2
        return crop_bbox(big, (x0, y0, x0 + w, y0 + h))
    raise ValueError(f"mode: expected one of {RESIZE_MODES}, got {mode!r}")


def load_batch(
    read: Callable[[int], np.ndarray], indices: Sequence[int], size: Sequence[int], mode: str = "squash"
) -> np.ndarray:
    """Reads, fits and normalises images -> float32 (len(indices), H, W, 3)."""
    return normalize(np.stack([fit_image(read(int(i)), size, mode) for i in indices]))


def image_batches(
    read: Callable[[int], np.ndarray],
    num_items: int,
    *,
    image_size: Sequence[int] | int,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    mode: str = "squash",
    flip: bool = False,
    indices: Sequence[int] | None = None,
    num_threads: int = 4,
    prefetch: int = 2,
    shard: tuple[int, int] | None = None,
):
    """A grain ``IterDataset`` of batches ``{"images": float32 (B, H, W, 3), "index": int64 (B,),
    "valid": bool (B,)}``.

    Args:
      read: image reader, ``read(i) -> uint8 (H, W, 3)`` (e.g. ``TrainingSet.read``).
      num_items: number of items (ignored when ``indices`` is given).
      image_size: (height, width) or one int for square images.
      batch_size: rows per batch.
      seed: seeds the shuffle order (reshuffled each epoch) and the random flips.
      shuffle: shuffle the order (training) or keep it (extraction).
      num_epochs: passes over the data; None repeats forever.
      mode: how images are fitted to the size, see :func:`fit_image`.
      flip: random horizontal flips (seeded per element).
      indices: an explicit subset / order of item indices.
      num_threads: reader threads (grain prefetch); order and content stay deterministic.
      shard: ``(index, count)``: this host reads every count-th item starting at index (multi-host
        training, e.g. ``(jax.process_index(), jax.process_count())``); shards are disjoint.

    The iterator's ``get_state()`` / ``set_state(state)`` checkpoint the position (a small dict).
    """
    import grain

    if np.isscalar(image_size):
        size = (int(image_size), int(image_size))
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size: expected (height, width) >= 1 or an int, got {image_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode: expected one of {RESIZE_MODES}, got {mode!r}")
    items = np.arange(num_items, dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
    if shard is not None:
        index, count = (int(v) for v in shard)
        if not 0 <= index < count:
            raise ValueError(f"shard: expected (index, count) with 0 <= index < count, got {tuple(shard)}")
        items = items[index::count]
    if items.size == 0:
        raise ValueError("indices/num_items: the dataset (or this shard) is empty, expected >= 1 image")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs: expected >= 1 or None, got {num_epochs}")

    ds = grain.MapDataset.source(items)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)  # grain reshuffles every epoch from the seed
    training = shuffle or num_epochs is None

    def load(index):
        return {"image": fit_image(read(int(index)), size, mode), "index": np.int64(index)}

    ds = ds.map(load)
    if flip:
        ds = ds.random_map(_random_flip, seed=seed + 1)
    # Training drops the ragged last batch; extraction pads it (see _stack) so shapes stay static.
    ds = ds.batch(batch_size, drop_remainder=training, batch_fn=lambda rows: _stack(rows, batch_size))
    options = grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=max(1, prefetch))
    return ds.to_iter_dataset(options)


def _random_flip(element, rng: np.random.Generator):
    if rng.random() < 0.5:
        element = dict(element, image=np.ascontiguousarray(element["image"][:, ::-1]))
    return element


def _stack(rows, batch_size: int) -> dict:
    n = len(rows)
    valid = np.zeros(batch_size, bool)
    valid[:n] = True
    rows = list(rows) + [rows[-1]] * (batch_size - n)
    images = normalize(np.stack([r["image"] for r in rows]))
    return {"images": images, "index": np.array([r["index"] for r in rows], np.int64), "valid": valid}
