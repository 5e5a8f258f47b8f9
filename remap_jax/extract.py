"""Global descriptor extraction: the `Extractor` API and the `remap-extract` command.

    from remap_jax import Extractor
    extractor = Extractor.from_pretrained("resnet101", weights="resnet101.safetensors")   # off the shelf
    extractor = Extractor.from_checkpoint("/tmp/remap_demo/export")                      # a trained model
    descriptors = extractor(images)        # list of uint8 (H, W, 3) arrays / paths / bytes -> (N, D) float32

Images of any size and orientation are resized to a few static shapes so only those are ever compiled:
`resize="fixed"` (default, the paper's setting) uses `image_size` = (height, width) for landscape images and
(width, height) for portrait ones (1024x768 / 768x1024); `resize="long_side"` keeps the aspect ratio: the long
side becomes max(image_size) and the short side is rounded to a multiple of `bucket` pixels. Query images can
be cropped to a bounding box first (`bboxes`, the revisited protocol). Decoding and resizing run in background
threads; batches are copied to the device while the previous batch computes; ImageNet normalisation happens
on the device (uint8 travels, 4x less to copy).

Command:

    remap-extract --arch resnet101 --weights resnet101.safetensors --images DIR --out db.npz
    remap-extract --checkpoint /tmp/remap_demo/export --images queries.txt --out q.npz --scales 1,1.25

`--images` is a directory (searched recursively) or a text file with one image path per line, optionally
followed by a bounding box `x0 y0 x1 y1`. The output `.npz` holds `descriptors` (N, D) float32, `ids` (N,)
(paths as listed, or relative to DIR), `failed` (M,) and `failed_reasons` (M,) for images that could not be
read, and `meta` (JSON of the settings). Progress is written to `OUT.partial.npz` every `--save-every` batches
and on interruption; rerunning the same command resumes from it.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import functools
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from remap_jax import atomic
from remap_jax.data.images import ImageDecodeError, crop_bbox, load_rgb, normalize, resize_to
from remap_jax.model import (
    DTYPES,
    RetrievalModel,
    build_head,
    combine_scales,
    init_variables,
    load_exported,
    model_from_config,
    scaled_size,
)

__all__ = ["Described", "Extractor", "Failed", "main", "target_size"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
RESIZE_MODES = ("fixed", "long_side")


class Described(NamedTuple):
    """A finished batch: `indices` (n,) into the input list, `descriptors` (n, D) float32 unit rows."""

    indices: np.ndarray
    descriptors: np.ndarray


class Failed(NamedTuple):
    """An input that could not be described (unreadable file, bad array, empty crop) and why."""

    index: int
    reason: str


def target_size(
    height: int, width: int, image_size: Sequence[int] = (768, 1024), resize: str = "fixed", bucket: int = 64
) -> tuple[int, int]:
    """The (height, width) an image of `height` x `width` pixels is resized to before description.

    fixed: `image_size` = (h, w) for landscape/square images, (w, h) for portrait ones.
    long_side: long side = max(image_size), short side = the aspect-preserving length rounded to a multiple of
    `bucket` (at least `bucket`, at most the long side), orientation kept.
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
    raise ValueError(f"resize: expected one of {RESIZE_MODES}, got {resize!r}")


class Extractor:
    """Describes images with a RetrievalModel: `extractor(images) -> (N, D)` float32 unit descriptors.

    Args:
      model, variables: the RetrievalModel and its variables (see `remap_jax.model`).
      image_size: (height, width) of landscape inputs; portrait inputs use (width, height).
      resize: "fixed" or "long_side" (aspect-preserving, short side bucketed to `bucket` pixels).
      scales, scale_weights: multi-scale description (MS-REMAP); each scale resizes the original image to
        image_size * scale; descriptors are combined by the weights (default equal) and L2-normalised.
      batch_size: images per device call (partial batches are zero-padded: shapes stay static).
      workers: decoding/resizing threads. prefetch: batches copied to the device ahead of the computation.
      data_parallel: split each batch over all local devices (default: when there are several and
        batch_size is a multiple of their number).
    """

    def __init__(
        self,
        model: RetrievalModel,
        variables: Mapping,
        *,
        image_size: Sequence[int] = (768, 1024),
        resize: str = "fixed",
        bucket: int = 64,
        scales: Sequence[float] = (1.0,),
        scale_weights: Sequence[float] | None = None,
        batch_size: int = 4,
        workers: int = 4,
        prefetch: int = 2,
        data_parallel: bool | None = None,
    ):
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize: expected one of {RESIZE_MODES}, got {resize!r}")
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size: expected (height, width) >= 1, got {tuple(image_size)}")
        if not scales or min(scales) <= 0:
            raise ValueError(f"scales: expected positive multipliers, got {tuple(scales)}")
        if scale_weights is not None and len(scale_weights) != len(scales):
            raise ValueError(
                f"scale_weights: expected {len(scales)} (one per scale), got {len(scale_weights)}"
            )
        if batch_size < 1 or workers < 1 or prefetch < 1:
            raise ValueError(
                f"batch_size/workers/prefetch: expected >= 1, got {batch_size}/{workers}/{prefetch}"
            )
        self.model = model
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.resize = resize
        self.bucket = int(bucket)
        self.scales = tuple(float(s) for s in scales)
        self.scale_weights = None if scale_weights is None else tuple(float(w) for w in scale_weights)
        self.batch_size = int(batch_size)
        self.workers = int(workers)
        self.prefetch = int(prefetch)
        devices = jax.local_devices()
        if data_parallel is None:
            data_parallel = len(devices) > 1 and self.batch_size % len(devices) == 0
        if data_parallel and self.batch_size % len(devices):
            raise ValueError(f"batch_size: {batch_size} is not a multiple of the {len(devices)} devices")
        if data_parallel:
            mesh = jax.sharding.Mesh(np.array(devices), ("data",))
            self._batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
            replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        else:
            self._batch_sharding = replicated = jax.sharding.SingleDeviceSharding(devices[0])
        self._replicated = replicated
        self.variables = jax.device_put(jax.tree.map(jnp.asarray, _plain(variables)), replicated)
        self._variables_by_shape: dict[tuple, tuple] = {}
        self._describe = _describe_fn(model, self.scale_weights)

    # ------------------------------------------------------------------------------------------ builders

    @classmethod
    def from_pretrained(
        cls,
        arch: str,
        weights: str | os.PathLike | None = None,
        *,
        taps: Sequence[str] | None = None,
        head: str = "remap",
        levels: int = 4,
        overlap: float = 0.4,
        include_global: bool = False,
        alpha: Mapping[str, Any] | None = None,
        whitening: tuple[Any, Any] | None = None,
        p_init: float = 3.0,
        dtype: str = "float32",
        fold_bn: bool = True,
        seed: int = 0,
        image_size: Sequence[int] = (768, 1024),
        **options,
    ) -> Extractor:
        """An off-the-shelf extractor: backbone `arch` with torchvision/timm `weights` + a pooling head.

        taps: default `remap_jax.backbones.default_taps(arch)` (the last two blocks).
        head: "remap" (alpha = 1 unless `alpha` maps layers to region weights: multi-layer R-MAC), "rmac",
          "gem", "mac", "spoc". `whitening` = (W, b) adds a whitening layer (y = x @ W.T + b), else none.
        weights=None: seeded random backbone (for tests and timing only; a warning says so).
        Other keyword options go to `Extractor(...)` (resize, scales, batch_size, ...).
        """
        from remap_jax.backbones import create_backbone, default_taps, load_pretrained

        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}")
        taps = tuple(taps) if taps else default_taps(arch)
        backbone = create_backbone(arch, dtype=DTYPES[dtype], fold_bn=fold_bn)
        fields = dict(
            levels=levels,
            overlap=overlap,
            include_global=include_global,
            p_init=p_init,
            alpha_init=alpha,
            whiten=whitening is not None,
            whitening_init=whitening,
        )
        model = RetrievalModel(backbone=backbone, head=build_head(head, taps, **fields), taps=taps)
        if weights is None:
            warnings.warn(
                f"Extractor.from_pretrained({arch!r}): no weights given, using a random backbone "
                f"(seed {seed}); "
                "descriptors are meaningless for retrieval",
                stacklevel=2,
            )
            backbone_variables = None
        else:
            backbone_variables = load_pretrained(arch, weights)
        variables = init_variables(model, jax.random.key(seed), (1, *image_size, 3), backbone_variables)
        return cls(model, variables, image_size=image_size, **options)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, *, dtype: str | None = None, fold_bn: bool = True, **options
    ) -> Extractor:
        """An extractor from an export directory (`remap_jax.model.save_exported`; a training workdir holding
        `export/` also works). Image size, scales and weights come from its config unless given here."""
        path = os.fspath(path)
        if not os.path.exists(os.path.join(path, "config.json")) and os.path.isdir(
            os.path.join(path, "export")
        ):
            path = os.path.join(path, "export")
        config, variables = load_exported(path)
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}")
        model = model_from_config(config, dtype=None if dtype is None else DTYPES[dtype], fold_bn=fold_bn)
        options.setdefault("image_size", tuple(config["image_size"]))
        if "scales" not in options:
            options["scales"] = tuple(config["scales"])
            options.setdefault("scale_weights", config["scale_weights"])
        extractor = cls(model, variables, **options)
        extractor.config = config
        return extractor

    # ------------------------------------------------------------------------------------------- running

    @functools.cached_property
    def dim(self) -> int:
        """Descriptor size D."""
        size = self.image_size
        shapes = tuple(jax.ShapeDtypeStruct((1, *scaled_size(size, s), 3), jnp.uint8) for s in self.scales)
        out = jax.eval_shape(self._describe, self._variables_for(size), shapes)
        return int(out.shape[-1])

    def __call__(self, images: Sequence[Any], bboxes: Sequence[Any] | None = None, progress: bool = False):
        """Describes `images` (uint8 (H, W, 3) arrays, paths or encoded bytes) -> (N, D) float32.

        bboxes: optional per-image (x0, y0, x1, y1) crop (None entries: whole image).
        Raises ImageDecodeError listing every input that could not be described.
        """
        images = list(images)
        out = None
        failures = []
        for item in self.describe_iter(images, bboxes, progress=progress):
            if isinstance(item, Failed):
                failures.append(item)
                continue
            if out is None:
                out = np.zeros((len(images), item.descriptors.shape[1]), np.float32)
            out[item.indices] = item.descriptors
        if failures:
            listing = "; ".join(f"#{f.index}: {f.reason}" for f in failures[:10])
            raise ImageDecodeError(
                f"images: {len(failures)} of {len(images)} could not be described: {listing}"
            )
        if out is None:
            out = np.zeros((0, self.dim), np.float32)
        return out

    def describe_iter(
        self,
        sources: Sequence[Any],
        bboxes: Sequence[Any] | None = None,
        indices: Sequence[int] | None = None,
        progress: bool = False,
    ) -> Iterator[Described | Failed]:
        """Yields `Described` batches and `Failed` inputs, in completion order (not input order).

        indices: which positions of `sources` to describe (default all); the rest are skipped (resuming).
        progress: a tqdm bar with images/s.
        """
        if bboxes is not None and len(bboxes) != len(sources):
            raise ValueError(
                f"bboxes: expected {len(sources)} (one per image, None for none), got {len(bboxes)}"
            )
        todo = list(range(len(sources))) if indices is None else [int(i) for i in indices]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="img", desc="describe", dynamic_ncols=True)
        pending: collections.deque = collections.deque()
        try:
            for item in self._device_batches(sources, bboxes, todo):
                if isinstance(item, Failed):
                    if bar is not None:
                        bar.update(1)
                    yield item
                    continue
                idx, count, device_batch, size = item
                # Dispatch is asynchronous: the next batch is prepared/copied while this one computes.
                pending.append((idx, count, self._describe(self._variables_for(size), device_batch)))
                if len(pending) > 1:
                    done = self._finish(pending.popleft())
                    if bar is not None:
                        bar.update(len(done.indices))
                    yield done
            while pending:
                done = self._finish(pending.popleft())
                if bar is not None:
                    bar.update(len(done.indices))
                yield done
        finally:
            if bar is not None:
                bar.close()

    @staticmethod
    def _finish(item) -> Described:
        idx, count, out = item
        return Described(np.asarray(idx, np.int64), np.asarray(out, np.float32)[:count])

    def _prepare(self, source, bbox) -> tuple[tuple[int, int], tuple[np.ndarray, ...]]:
        """Decode (or check) one image, crop, resize to every scale's static shape (in a worker thread)."""
        if isinstance(source, np.ndarray):
            img = source
            if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8 or 0 in img.shape:
                raise ValueError(f"expected a uint8 (H, W, 3) array, got {img.dtype} {img.shape}")
        else:
            img = load_rgb(source)
        if bbox is not None:
            img = crop_bbox(img, bbox)
        size = target_size(img.shape[0], img.shape[1], self.image_size, self.resize, self.bucket)
        return size, tuple(resize_to(img, scaled_size(size, s)) for s in self.scales)

    def _host_batches(self, sources, bboxes, todo):
        """(indices, count, per-scale uint8 batches, size) per full bucket, or Failed; background decoding."""
        window = max(2 * self.batch_size * (self.prefetch + 1), 2 * self.workers)
        buckets: dict[tuple[int, int], list] = {}
        with concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="remap-decode") as pool:
            queue: collections.deque = collections.deque()
            todo_iter = iter(todo)

            def refill():
                while len(queue) < window:
                    i = next(todo_iter, None)
                    if i is None:
                        return
                    bbox = None if bboxes is None else bboxes[i]
                    queue.append((i, pool.submit(self._prepare, sources[i], bbox)))

            refill()
            while queue:
                i, future = queue.popleft()
                refill()
                try:
                    size, arrays = future.result()
                except (ImageDecodeError, ValueError, OSError) as e:
                    yield Failed(i, str(e))
                    continue
                bucket = buckets.setdefault(size, [])
                bucket.append((i, arrays))
                if len(bucket) == self.batch_size:
                    yield self._stack(buckets.pop(size), size)
            for size, bucket in buckets.items():
                yield self._stack(bucket, size)

    def _stack(self, bucket, size):
        count = len(bucket)
        batches = []
        for s in range(len(self.scales)):
            stacked = np.zeros((self.batch_size, *bucket[0][1][s].shape), np.uint8)  # zero-padded tail
            for row, (_, arrays) in enumerate(bucket):
                stacked[row] = arrays[s]
            batches.append(stacked)
        return [i for i, _ in bucket], count, tuple(batches), size

    def _device_batches(self, sources, bboxes, todo):
        """Host batches copied to the device `prefetch` batches ahead of their use."""
        queue: collections.deque = collections.deque()
        for item in self._host_batches(sources, bboxes, todo):
            if isinstance(item, Failed):
                yield item
                continue
            idx, count, batches, size = item
            queue.append((idx, count, jax.device_put(batches, self._batch_sharding), size))
            if len(queue) > self.prefetch:
                yield queue.popleft()
        while queue:
            yield queue.popleft()

    def _variables_for(self, size: tuple[int, int]) -> tuple:
        """Per-scale variables for inputs of `size`, with REMAP region weights fitted to the map's regions.

        Region weights alpha (R,) belong to one map shape. Same-aspect sizes (landscape/portrait, the scales
        of MS-REMAP) keep R. For another R (aspect-preserving buckets) a constant alpha (off-the-shelf
        REMAP = R-MAC) is re-broadcast; learned weights cannot be transferred and raise an error.
        """
        if size in self._variables_by_shape:
            return self._variables_by_shape[size]
        out = tuple(self._fit_alpha(scaled_size(size, s)) for s in self.scales)
        self._variables_by_shape[size] = out
        return out

    def _fit_alpha(self, size: tuple[int, int]):
        from remap_jax import heads
        from remap_jax.regions import num_regions

        head = self.model.head
        head_params = self.variables["params"].get("head", {})
        if not isinstance(head, heads.REMAPHead):
            return self.variables
        apply = lambda v, x: self.model.backbone.apply(v, x, taps=tuple(self.model.taps))  # noqa: E731
        backbone_vars = {
            "params": self.variables["params"]["backbone"],
            "batch_stats": self.variables.get("batch_stats", {}).get("backbone", {}),
        }
        maps = jax.eval_shape(apply, backbone_vars, jax.ShapeDtypeStruct((1, *size, 3), jnp.float32))
        new_head = dict(head_params)
        changed = False
        for layer in head.layers:
            name = heads.stream_name(layer)
            alpha = np.asarray(head_params[name]["alpha"])
            _, h, w, _ = maps[layer].shape
            r = num_regions(h, w, head.levels, head.overlap, head.include_global)
            if alpha.shape == (r,):
                continue
            if not np.all(alpha == alpha.reshape(-1)[0]):
                raise ValueError(
                    f"image size {size}: layer {layer!r} has a {h}x{w} map with {r} regions but the model's "
                    f"learned region weights have {alpha.shape[0]}; use resize='fixed' with the training "
                    f"image size (aspect ratio {self.image_size[1]}:{self.image_size[0]})"
                )
            new_head[name] = {**head_params[name], "alpha": jnp.full((r,), alpha.reshape(-1)[0], jnp.float32)}
            changed = True
        if not changed:
            return self.variables
        params = {**self.variables["params"], "head": jax.device_put(new_head, self._replicated)}
        return {**self.variables, "params": params}


def _describe_fn(model: RetrievalModel, weights: tuple[float, ...] | None):
    """jit(per-scale variables, per-scale uint8 batches -> (B, D)), shared by extractors of equal models so
    that rebuilding an Extractor (e.g. per evaluation) reuses the compiled programs."""
    try:
        return _describe_fn_cached(model, weights)
    except TypeError:  # an unhashable field (e.g. an alpha_init array): no sharing
        return _make_describe_fn(model, weights)


def _make_describe_fn(model, weights):
    def describe(variables_per_scale, batches):
        descs = [model.apply(v, normalize(b)) for v, b in zip(variables_per_scale, batches, strict=True)]
        return combine_scales(descs, weights)

    return jax.jit(describe)


_describe_fn_cached = functools.lru_cache(maxsize=16)(_make_describe_fn)


def _plain(tree):
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


# ------------------------------------------------------------------------------------------------- command


def list_images(spec: str) -> tuple[list[str], list[str], list[Any]]:
    """`--images` argument -> (ids, paths, bboxes). A directory is searched recursively for image files
    (ids = paths relative to it, sorted); a text file lists `path [x0 y0 x1 y1]` per line (relative paths are
    relative to the list file; `#` starts a comment)."""
    if os.path.isdir(spec):
        ids = []
        for root, dirs, files in os.walk(spec):
            dirs.sort()
            for name in files:
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    ids.append(os.path.relpath(os.path.join(root, name), spec))
        ids.sort()
        if not ids:
            raise ValueError(f"--images {spec!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
        return ids, [os.path.join(spec, i) for i in ids], [None] * len(ids)
    if not os.path.isfile(spec):
        raise ValueError(f"--images {spec!r}: no such directory or list file")
    base = os.path.dirname(os.path.abspath(spec))
    ids, paths, bboxes = [], [], []
    with open(spec) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            bbox = None
            if len(parts) >= 5:
                try:
                    bbox = tuple(float(v) for v in parts[-4:])
                    parts = parts[:-4]
                except ValueError:
                    bbox = None
            name = " ".join(parts) if bbox is not None else line
            ids.append(name)
            paths.append(name if os.path.isabs(name) else os.path.join(base, name))
            bboxes.append(bbox)
    if not ids:
        raise ValueError(f"--images {spec!r}: the list file names no images")
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"--images {spec!r}: duplicate entries {dup}; ids must be unique")
    return ids, paths, bboxes


def partial_path(out: str) -> str:
    """`db.npz` -> `db.partial.npz`: where progress is kept while extracting."""
    stem = out[:-4] if out.endswith(".npz") else out
    return stem + ".partial.npz"


def _result_arrays(done_ids, done_desc, failed, meta, dim):
    descriptors = np.concatenate(done_desc, axis=0) if done_desc else np.zeros((0, dim), np.float32)
    return dict(
        descriptors=descriptors.astype(np.float32),
        ids=np.array(done_ids, dtype=str).reshape(-1),
        failed=np.array([f[0] for f in failed], dtype=str).reshape(-1),
        failed_reasons=np.array([f[1] for f in failed], dtype=str).reshape(-1),
        meta=np.array(json.dumps(meta, sort_keys=True)),
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="remap-extract",
        description="Extract global REMAP descriptors for a folder or list of images into an .npz file.",
    )
    src = p.add_argument_group("model (either --arch [--weights] or --checkpoint)")
    src.add_argument(
        "--arch", help="backbone: resnet18/34/50/101/152, resnext101_32x8d, resnext101_64x4d, vgg16"
    )
    src.add_argument("--weights", help="torchvision/timm weights (.safetensors, .npz, .pth) for --arch")
    src.add_argument("--checkpoint", help="export directory of a trained model (or its training workdir)")
    src.add_argument("--taps", help="comma-separated tap names for --arch (default: last two blocks)")
    src.add_argument("--head", default="remap", help="pooling head for --arch: remap, rmac, gem, mac, spoc")
    src.add_argument("--levels", type=int, default=4, help="R-MAC levels of the remap/rmac head")
    src.add_argument("--whitening", help=".npz with W (out, in) and b (out,) whitening for --arch")
    p.add_argument("--images", required=True, help="image directory (recursive) or list file")
    p.add_argument(
        "--out", required=True, help="output .npz (descriptors, ids, failed, failed_reasons, meta)"
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--dtype", choices=sorted(DTYPES), help="compute dtype (default float32 / the checkpoint's)"
    )
    p.add_argument("--scales", help="comma-separated input-size multipliers, e.g. 1,1.25 (MS-REMAP)")
    p.add_argument("--scale-weights", help="comma-separated weights, one per scale (default equal)")
    p.add_argument(
        "--image-size", help="HEIGHT,WIDTH of landscape inputs (default 768,1024 / the checkpoint's)"
    )
    p.add_argument("--resize", choices=RESIZE_MODES, default="fixed")
    p.add_argument("--bucket", type=int, default=64, help="short-side multiple for --resize long_side")
    p.add_argument("--workers", type=int, default=4, help="decoding threads")
    p.add_argument("--save-every", type=int, default=50, help="write OUT.partial.npz every N batches")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing OUT.partial.npz")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _floats(text: str | None, name: str):
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"remap-extract: {name} {text!r}: expected comma-separated numbers") from None


def make_extractor(args) -> tuple[Extractor, dict]:
    """The Extractor the command line asks for, and the settings recorded in the output's `meta`."""
    options: dict[str, Any] = dict(
        batch_size=args.batch_size, workers=args.workers, resize=args.resize, bucket=args.bucket
    )
    scales, weights, size = (
        _floats(args.scales, "--scales"),
        _floats(args.scale_weights, "--scale-weights"),
        None,
    )
    if args.image_size:
        size = tuple(int(v) for v in _floats(args.image_size, "--image-size"))
        options["image_size"] = size
    if scales:
        options["scales"] = scales
    if weights:
        options["scale_weights"] = weights
    if args.checkpoint:
        if args.arch or args.weights:
            raise SystemExit("remap-extract: give either --checkpoint or --arch/--weights, not both")
        extractor = Extractor.from_checkpoint(args.checkpoint, dtype=args.dtype, **options)
        source = {"checkpoint": os.path.abspath(args.checkpoint)}
    elif args.arch:
        whitening = None
        if args.whitening:
            with np.load(args.whitening) as f:
                whitening = (f["W"], f["b"])
        taps = tuple(t for t in (args.taps or "").split(",") if t) or None
        if size:
            options["image_size"] = size
        extractor = Extractor.from_pretrained(
            args.arch,
            args.weights,
            taps=taps,
            head=args.head,
            levels=args.levels,
            whitening=whitening,
            dtype=args.dtype or "float32",
            **options,
        )
        source = {
            "arch": args.arch,
            "weights": args.weights and os.path.abspath(args.weights),
            "taps": list(extractor.model.taps),
            "head": args.head,
            "levels": args.levels,
            "whitening": args.whitening and os.path.abspath(args.whitening),
        }
    else:
        raise SystemExit("remap-extract: give --arch [--weights] or --checkpoint")
    meta = {
        **source,
        "dtype": args.dtype,
        "image_size": list(extractor.image_size),
        "resize": extractor.resize,
        "bucket": extractor.bucket,
        "scales": list(extractor.scales),
        "scale_weights": extractor.scale_weights and list(extractor.scale_weights),
    }
    return extractor, meta


def run(args) -> dict:
    """Runs an extraction (resuming from OUT.partial.npz) and writes OUT; returns a summary dict."""
    ids, paths, bboxes = list_images(args.images)
    extractor, meta = make_extractor(args)
    partial = partial_path(args.out)
    done_ids: list[str] = []
    done_desc: list[np.ndarray] = []
    failed: list[tuple[str, str]] = []
    if os.path.exists(partial) and not args.no_resume:
        with np.load(partial) as f:
            old_meta = json.loads(str(f["meta"]))
            if old_meta != json.loads(json.dumps(meta, sort_keys=True)):
                raise SystemExit(
                    f"remap-extract: {partial} was written with other settings ({old_meta}); "
                    "rerun with the same arguments, or pass --no-resume to start over"
                )
            done_ids = [str(i) for i in f["ids"]]
            done_desc = [f["descriptors"]]
            failed = list(
                zip((str(i) for i in f["failed"]), (str(r) for r in f["failed_reasons"]), strict=True)
            )
        print(f"resuming from {partial}: {len(done_ids)} described, {len(failed)} failed", file=sys.stderr)
    finished = set(done_ids) | {i for i, _ in failed}
    todo = [k for k, i in enumerate(ids) if i not in finished]
    batches_since_save = 0
    start = time.perf_counter()
    described_now = 0

    def save_partial():
        atomic.save_npz(partial, **_result_arrays(done_ids, done_desc, failed, meta, extractor.dim))

    try:
        for item in extractor.describe_iter(paths, bboxes, indices=todo, progress=not args.quiet):
            if isinstance(item, Failed):
                failed.append((ids[item.index], item.reason))
                print(f"failed: {ids[item.index]}: {item.reason}", file=sys.stderr)
                continue
            done_ids.extend(ids[k] for k in item.indices)
            done_desc.append(item.descriptors)
            described_now += len(item.indices)
            batches_since_save += 1
            if batches_since_save >= args.save_every:
                save_partial()
                batches_since_save = 0
    except BaseException:
        if done_ids or failed:
            save_partial()
            print(
                f"interrupted: progress saved to {partial}; rerun the same command to resume", file=sys.stderr
            )
        raise
    elapsed = time.perf_counter() - start
    arrays = _result_arrays(done_ids, done_desc, failed, meta, extractor.dim)
    order = {i: k for k, i in enumerate(ids)}
    perm = np.argsort([order[i] for i in arrays["ids"]], kind="stable")
    arrays["descriptors"], arrays["ids"] = arrays["descriptors"][perm], arrays["ids"][perm]
    atomic.save_npz(args.out, **arrays)
    if os.path.exists(partial):
        os.remove(partial)
    rate = described_now / elapsed if elapsed > 0 else float("nan")
    summary = {
        "out": args.out,
        "described": len(arrays["ids"]),
        "failed": len(failed),
        "dim": int(arrays["descriptors"].shape[1]),
        "seconds": elapsed,
        "images_per_s": rate,
    }
    print(
        f"wrote {args.out}: {summary['described']} descriptors of dim {summary['dim']}, "
        f"{summary['failed']} failed; "
        f"{described_now} described in this run at {rate:.2f} img/s",
        file=sys.stderr,
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"remap-extract: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130  # progress was saved by run(); the message says how to resume
    return 0


if __name__ == "__main__":
    sys.exit(main())
