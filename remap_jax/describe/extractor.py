"""The one image -> descriptor path: `Extractor`.

    from remap_jax import Extractor
    extractor = Extractor.from_pretrained("resnet101", weights="resnet101.safetensors")   # off the shelf
    extractor = Extractor.from_checkpoint("/tmp/remap_demo/export")                      # a trained model
    descriptors = extractor(images)          # uint8 (H, W, 3) arrays / paths / bytes -> (N, D) float32
    regions = extractor.regions(images)      # layer -> (N, R, C) L2-normalised region vectors (KL weights)

Everything in the project that turns images into descriptors goes through it: `remap-extract`, evaluation
(`remap_jax.evaluation.benchmark`), the trainer's mining and validation, head initialisation
(`remap_jax.fit.head_init`)
and the benchmarks. It holds:

* static shapes: images of any size and orientation are resized to a few shapes so only those are ever
  compiled. `resize="fixed"` (default, the paper's setting) uses `image_size` = (height, width) for landscape
  images and (width, height) for portrait ones (1024x768 / 768x1024); `resize="long_side"` keeps the aspect
  ratio: the long side becomes max(image_size) and the short side is rounded to a multiple of `bucket`;
  `resize="exact"` resizes every image to `image_size` whatever its orientation (how training images are
  fed). Partial batches are zero-padded to `batch_size`.
* input: arrays, paths, encoded bytes, or any lazy sequence of them (`remap_jax.data.images.ImageList` over a
  dataset's reader); items are read, decoded, cropped (`bboxes`) and resized in `workers` background threads
  by `remap_jax.data.images.decode_resized` (JPEGs at least twice the target size are decoded at 1/2, 1/4 or
  1/8 scale by the JPEG decoder; `draft=False` decodes every pixel).
* device work: batches are copied to the device `prefetch` batches ahead of their use and split over the
  devices of a `data` mesh axis; pixels travel as uint8 and the model normalises them on the device.
* multi-scale description (MS-REMAP) and, on request, per-region outputs instead of descriptors.
* cheap variable swaps: `extractor.set_variables(v)` (the trainer does it every epoch); compiled programs are
  shared between extractors of equal models.
* several processes (`jax.distributed`): each process reads, decodes and describes only its contiguous share
  of the inputs on its own devices (`remap_jax.runtime.distributed.share`); `extractor(images)` and
  `.regions()` then
  gather every share, so all processes get the whole result.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from remap_jax.data.images import ImageDecodeError, decode_resized
from remap_jax.model import (
    DTYPES,
    RetrievalModel,
    build_head,
    combine_scales,
    init_variables,
    load_exported,
    model_from_config,
    normalise_config,
    scaled_size,
)
from remap_jax.runtime import atomic, xla

__all__ = ["Described", "Extractor", "Failed", "RESIZE_MODES", "ResumeMismatchError", "describe_resumable",
           "feature_arrays", "partial_file_of_process", "target_size"]

RESIZE_MODES = ("fixed", "long_side", "exact")
OUTPUTS = ("descriptors", "regions")
Progress = bool | Callable[[int], None]


class Described(NamedTuple):
    """A finished batch: `indices` (n,) into the input list and `descriptors`: (n, D) float32 unit rows, or
    with `output="regions"` a mapping layer -> (n, R, C) float32 region vectors."""

    indices: np.ndarray
    descriptors: Any


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


def local_mesh() -> jax.sharding.Mesh:
    """A 1-D `data` mesh over this process's devices."""
    return jax.sharding.Mesh(np.array(jax.local_devices()), ("data",))


class Extractor:
    """Describes images with a RetrievalModel: `extractor(images) -> (N, D)` float32 unit descriptors.

    Args:
      model, variables: the RetrievalModel and its variables (see `remap_jax.model`).
      image_size: (height, width) of landscape inputs; portrait inputs use (width, height).
      resize: "fixed", "long_side" (aspect-preserving, short side bucketed to `bucket` pixels) or "exact".
      scales, scale_weights: multi-scale description (MS-REMAP); each scale resizes the original image to
        image_size * scale; descriptors are combined by the weights (default equal) and L2-normalised.
      batch_size: images per device call (partial batches are zero-padded: shapes stay static).
      workers: decoding/resizing threads. prefetch: batches copied to the device ahead of the computation.
      draft: decode JPEGs at least twice the target size at a reduced scale (`decode_resized`); False
        decodes every pixel (exact, several times slower on large photos).
      mesh: a mesh with a `data` axis over this process's devices to split batches over (default: all local
        devices when there are several and batch_size is a multiple of their number).
      data_parallel: False keeps everything on the first device; True insists on splitting.
      process_share: in a multi-process job, describe only this process's share of the inputs (and gather
        in `__call__` / `regions`); default: when there are several processes.
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
        mesh: jax.sharding.Mesh | None = None,
        data_parallel: bool | None = None,
        process_share: bool | None = None,
        draft: bool = True,
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
        self.draft = bool(draft)
        mesh = mesh or local_mesh()
        devices = list(mesh.devices.flat)
        if any(d.process_index != jax.process_index() for d in devices):
            raise ValueError("mesh: expected devices of this process only (each process describes its share)")
        self.process_share = jax.process_count() > 1 if process_share is None else bool(process_share)
        if data_parallel is None:
            data_parallel = len(devices) > 1 and self.batch_size % len(devices) == 0
        if data_parallel and self.batch_size % len(devices):
            raise ValueError(f"batch_size: {batch_size} is not a multiple of the {len(devices)} devices")
        if data_parallel:
            self._batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
            self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        else:
            self._batch_sharding = self._replicated = jax.sharding.SingleDeviceSharding(devices[0])
        self._platform = devices[0].platform
        self._device = devices[0]
        self._program = None  # an exported artifact's describe program (`from_exported`), else the model's
        self.config: dict | None = None
        self.set_variables(variables)

    # ------------------------------------------------------------------------------------------ builders

    @classmethod
    def from_config(cls, config: Mapping[str, Any], variables: Mapping, *, dtype: str | None = None,
                    fold_bn: bool = True, **options) -> Extractor:
        """An extractor for a model spec (`remap_jax.model`) and its variables. Image size, scales and scale
        weights come from the spec unless given in `options`."""
        config = normalise_config(config)
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

        taps: default `remap_jax.nn.backbones.default_taps(arch)` (the last two blocks).
        head: "remap" (alpha = 1 unless `alpha` maps layers to region weights: multi-layer R-MAC), "rmac",
          "gem", "mac", "spoc". `whitening` = (W, b) adds a whitening layer (y = x @ W.T + b), else none.
        weights=None: seeded random backbone (for tests and timing only; a warning says so); "installed": the
        weights of arch's pip package (`remap_jax.nn.backbones.load_pretrained(arch)`).
        Other keyword options go to `Extractor(...)` (resize, scales, batch_size, ...).
        """
        from remap_jax.nn.backbones import create_backbone, default_taps, input_normalization, load_pretrained

        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}")
        taps = tuple(taps) if taps else default_taps(arch)
        backbone = create_backbone(arch, dtype=DTYPES[dtype], fold_bn=fold_bn)
        fields = dict(levels=levels, overlap=overlap, include_global=include_global, p_init=p_init,
                      whiten=whitening is not None)
        mean, std = input_normalization(arch)
        model = RetrievalModel(backbone=backbone, head=build_head(head, taps, **fields), taps=taps,
                               pixel_mean=tuple(float(v) for v in mean),
                               pixel_std=tuple(float(v) for v in std))
        if weights is None:
            warnings.warn(
                f"Extractor.from_pretrained({arch!r}): no weights given, using a random backbone "
                f"(seed {seed}); descriptors are meaningless for retrieval",
                stacklevel=2,
            )
            backbone_variables = None
        else:
            backbone_variables = load_pretrained(arch, weights)
        head_params = {}
        if alpha is not None:
            from remap_jax.nn.heads import stream_name

            head_params.update({stream_name(layer): {"alpha": a} for layer, a in alpha.items()})
        if whitening is not None:
            w, b = (np.asarray(a, np.float32) for a in whitening)
            head_params["whiten"] = {"kernel": w.T, "bias": b}
        variables = init_variables(model, jax.random.key(seed), (1, *image_size, 3), backbone_variables,
                                   head_params=head_params)
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
        return cls.from_config(config, variables, dtype=dtype, fold_bn=fold_bn, **options)

    @classmethod
    def from_exported(cls, path: str | os.PathLike, **options) -> Extractor:
        """An extractor that runs a `remap-export` artifact (`remap_jax.describe.export`, a directory or its
        `descriptor.jax`) instead of a model: the same reading, decoding, cropping, batching and device
        placement, with the artifact's program as the describe step. Input size and resize rule
        ("exact") come from the artifact; MS-REMAP scales are inside it. Other keyword options go to
        `Extractor(...)` (batch_size, workers, mesh, ...). Descriptors only (no `regions`).

        Raises `remap_jax.describe.export.ExportError` for a missing, truncated or foreign artifact, or one
        not
        exported for the devices' platform."""
        from remap_jax.describe.export import ExportedDescriber, ExportError

        fixed = sorted(k for k in ("image_size", "resize", "bucket", "scales", "scale_weights")
                       if k in options)
        if fixed:
            raise ExportError(f"{', '.join(fixed)}: fixed by the exported artifact, not an option of "
                              "from_exported")
        describer = ExportedDescriber(path)
        extractor = cls(describer, {}, image_size=describer.image_size, resize="exact", **options)
        describer.check_platform(extractor._device)
        extractor._program = xla.jit(lambda _variables, batches: describer.program(batches[0]),
                                     platform=extractor._platform)
        return extractor

    # ------------------------------------------------------------------------------------------ variables

    def set_variables(self, variables: Mapping) -> None:
        """Replaces the model's variables (same structure); cheap: no recompilation. Arrays replicated over a
        multi-process mesh (a trainer's state) are taken from this process's copy."""
        local = jax.tree.map(_addressable, _plain(variables))
        self.variables = jax.device_put(local, self._replicated)
        self._variables_by_shape: dict[tuple, tuple] = {}

    def fingerprint(self) -> str:
        """A digest of the model, its variables and the resizing settings: equal fingerprints describe
        images identically (used to validate caches of descriptors)."""
        digest = hashlib.sha1()
        settings = (repr(self.model), self.image_size, self.resize, self.bucket, self.scales,
                    self.scale_weights) + (() if self.draft else ("no draft",))
        digest.update(repr(settings).encode())
        for path, leaf in jax.tree_util.tree_leaves_with_path(self.variables):
            digest.update(jax.tree_util.keystr(path).encode())
            digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
        return digest.hexdigest()[:20]

    # ------------------------------------------------------------------------------------------- running

    @functools.cached_property
    def dim(self) -> int:
        """Descriptor size D."""
        size = self.image_size
        shapes = tuple(jax.ShapeDtypeStruct((1, *scaled_size(size, s), 3), jnp.uint8) for s in self.scales)
        out = jax.eval_shape(self._compiled("descriptors"), self._variables_for(size), shapes)
        return int(out.shape[-1])

    def __call__(self, images: Sequence[Any], bboxes: Sequence[Any] | None = None,
                 progress: Progress = False) -> np.ndarray:
        """Describes `images` (uint8 (H, W, 3) arrays, paths or encoded bytes) -> (N, D) float32.

        bboxes: optional per-image (x0, y0, x1, y1) crop (None entries: whole image).
        progress: a tqdm bar with images/s (True), or a callable given the count of each finished batch.
        Raises ImageDecodeError listing every input that could not be described.
        """
        out = self._collect(images, bboxes, progress, "descriptors")
        return np.zeros((0, self.dim), np.float32) if out is None else out

    def regions(self, images: Sequence[Any], bboxes: Sequence[Any] | None = None,
                progress: Progress = False) -> dict[str, np.ndarray]:
        """Per-region outputs: layer -> (N, R, C) float32 L2-normalised R-MAC region vectors of every tapped
        layer (the grid of the model's head), what KL region weights are computed from. Single scale only."""
        out = self._collect(images, bboxes, progress, "regions")
        if out is None:
            raise ValueError("images: expected at least one image to describe, got none")
        return out

    def _collect(self, images, bboxes, progress, output):
        images = images if isinstance(images, Sequence) else list(images)
        out = None
        failures = []
        mine = self._share(len(images))
        for item in self.describe_iter(images, bboxes, indices=mine, progress=progress, output=output,
                                       share=False):
            if isinstance(item, Failed):
                failures.append(item)
                continue
            values = item.descriptors if isinstance(item.descriptors, Mapping) else {None: item.descriptors}
            if out is None:
                out = {k: np.zeros((len(images), *v.shape[1:]), np.float32) for k, v in values.items()}
            for k, v in values.items():
                out[k][item.indices] = v
        if self.process_share:
            out, failures = self._gather(images, mine, out, failures, output)
        if failures:
            listing = "; ".join(f"#{f.index}: {f.reason}" for f in failures[:10])
            raise ImageDecodeError(
                f"images: {len(failures)} of {len(images)} could not be described: {listing}"
            )
        return out[None] if out is not None and None in out else out

    def _share(self, n: int) -> list[int]:
        """The input positions this process describes: all of them, or its share in a multi-process job."""
        from remap_jax.runtime import distributed

        return distributed.share(n).tolist() if self.process_share else list(range(n))

    def _gather(self, images, mine, out, failures, output):
        """Every process's rows of `out` (its share of positions) and failures, on every process."""
        from remap_jax.runtime import distributed

        count = jax.process_count()
        shares = [distributed.share(len(images), p, count) for p in range(count)]
        if out is None:  # this process described nothing (an empty share, or only failures): learn the shapes
            shapes = self._output_shapes(output)
            out = {k: np.zeros((len(images), *shape[1:]), np.float32) for k, shape in shapes}
        gathered = {}
        for key, full in out.items():
            rows = distributed.allgather_rows(full[np.asarray(mine, np.int64)], [len(sh) for sh in shares])
            gathered[key] = np.zeros_like(full)
            gathered[key][np.concatenate(shares)] = rows
        lists = distributed.allgather_json([[f.index, f.reason] for f in failures])
        return gathered, [Failed(int(i), r) for part in lists for i, r in part]

    def _output_shapes(self, output: str):
        size = self.image_size
        shapes = tuple(jax.ShapeDtypeStruct((1, *scaled_size(size, s), 3), jnp.uint8) for s in self.scales)
        out = jax.eval_shape(self._compiled(output), self._variables_for(size), shapes)
        values = out if isinstance(out, Mapping) else {None: out}
        return [(k, v.shape) for k, v in values.items()]

    def describe_iter(
        self,
        sources: Sequence[Any],
        bboxes: Sequence[Any] | None = None,
        indices: Sequence[int] | None = None,
        progress: Progress = False,
        output: str = "descriptors",
        share: bool | None = None,
    ) -> Iterator[Described | Failed]:
        """Yields `Described` batches and `Failed` inputs, in completion order (not input order).

        indices: which positions of `sources` to describe (default all); the rest are skipped (resuming).
        progress: a tqdm bar with images/s (True), or a callable given the count of each finished batch.
        output: "descriptors" or "regions" (see `regions`).
        share: describe only this process's share of `indices` (default `process_share`); results are not
          gathered here (`__call__` does).
        """
        if output not in OUTPUTS:
            raise ValueError(f"output: expected one of {OUTPUTS}, got {output!r}")
        if output == "regions" and len(self.scales) != 1:
            raise ValueError(f"output='regions': needs a single scale, the extractor has {self.scales}")
        if bboxes is not None and len(bboxes) != len(sources):
            raise ValueError(
                f"bboxes: expected {len(sources)} (one per image, None for none), got {len(bboxes)}"
            )
        todo = list(range(len(sources))) if indices is None else [int(i) for i in indices]
        if self.process_share if share is None else share:
            from remap_jax.runtime import distributed

            todo = [todo[k] for k in distributed.share(len(todo))]
        fn = self._compiled(output)
        bar = None
        report = progress if callable(progress) else None
        if progress is True:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="img", desc="describe", dynamic_ncols=True)
            report = bar.update
        pending: collections.deque = collections.deque()
        try:
            for item in self._device_batches(sources, bboxes, todo):
                if isinstance(item, Failed):
                    if report is not None:
                        report(1)
                    yield item
                    continue
                idx, count, device_batch, size = item
                # Dispatch is asynchronous: the next batch is prepared/copied while this one computes.
                pending.append((idx, count, fn(self._variables_for(size), device_batch)))
                if len(pending) > 1:
                    done = self._finish(pending.popleft())
                    if report is not None:
                        report(len(done.indices))
                    yield done
            while pending:
                done = self._finish(pending.popleft())
                if report is not None:
                    report(len(done.indices))
                yield done
        finally:
            if bar is not None:
                bar.close()

    @staticmethod
    def _finish(item) -> Described:
        idx, count, out = item
        values = jax.tree.map(lambda v: np.asarray(v, np.float32)[:count], out)
        return Described(np.asarray(idx, np.int64), values)

    def describe_batch(self, batch) -> jax.Array:
        """One compiled call: uint8 (B, H, W, 3) pixels (host or device, already resized) -> (B, D) float32
        unit descriptors on the device, asynchronously. What `describe_iter` runs per batch, without the
        reading, resizing, padding and prefetching; single-scale extractors only."""
        if len(self.scales) != 1:
            raise ValueError(f"describe_batch: needs a single-scale extractor, this one has scales "
                             f"{self.scales}; use describe_iter or __call__")
        if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
            raise ValueError(f"batch: expected uint8 (B, H, W, 3) pixels, got {batch.dtype} "
                             f"{tuple(batch.shape)}")
        if self._program is not None:
            self.model.check_input(batch)
        batch = jax.device_put(batch, self._batch_sharding)  # a no-op for a batch already placed there
        size = (int(batch.shape[1]), int(batch.shape[2]))
        return self._compiled("descriptors")(self._variables_for(size), (batch,))

    def lower_batch(self, batch) -> jax.stages.Lowered:
        """`describe_batch`'s program lowered for `batch` (uint8 (B, H, W, 3) pixels or a
        jax.ShapeDtypeStruct of them): `.compile().cost_analysis()` gives XLA's flops and bytes of one call
        (the benchmark suite's roofline)."""
        size = (int(batch.shape[1]), int(batch.shape[2]))
        return self._compiled("descriptors").lower(self._variables_for(size), (batch,))

    def _compiled(self, output: str):
        if self._program is not None:
            if output == "regions":
                raise ValueError("output='regions': an exported artifact gives descriptors only; use the "
                                 "model (Extractor.from_checkpoint / from_pretrained)")
            return self._program
        if output == "regions":
            return _regions_fn(self.model, self._platform)
        return _describe_fn(self.model, self.scale_weights, self._platform)

    def _prepare(self, sources, i: int, bbox) -> tuple[tuple[int, int], tuple[np.ndarray, ...]]:
        """Read (or check), decode, crop and resize item i to every scale's static shape (in a worker)."""
        source = sources[i]
        if isinstance(source, np.ndarray):
            if source.ndim != 3 or source.shape[-1] != 3 or source.dtype != np.uint8 or 0 in source.shape:
                raise ValueError(f"expected a uint8 (H, W, 3) array, got {source.dtype} {source.shape}")

        def sizes(height, width):
            size = target_size(height, width, self.image_size, self.resize, self.bucket)
            return [scaled_size(size, s) for s in self.scales]

        decoded = decode_resized(source, sizes, bbox=bbox, draft=self.draft)
        return target_size(*decoded.source_size, self.image_size, self.resize, self.bucket), decoded.images

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
                    queue.append((i, pool.submit(self._prepare, sources, i, bbox)))

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

    def input_batches(self, sources: Sequence[Any], bboxes: Sequence[Any] | None = None,
                      indices: Sequence[int] | None = None) -> Iterator[tuple | Failed]:
        """The input pipeline alone, what `describe_iter` feeds the model: reading, decoding, cropping and
        resizing in `workers` threads, zero-padded batches of `batch_size` per static shape, copied to the
        device `prefetch` batches ahead. Yields (indices, count, per-scale device batches, (height, width))
        and `Failed` inputs; nothing is described (what a benchmark of the host side times)."""
        todo = list(range(len(sources))) if indices is None else [int(i) for i in indices]
        return self._device_batches(sources, bboxes, todo)

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
        from remap_jax.nn import heads
        from remap_jax.nn.regions import num_regions

        head = getattr(self.model, "head", None)
        if not isinstance(head, heads.REMAPHead):
            return self.variables
        head_params = self.variables["params"].get("head", {})
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


class ResumeMismatchError(ValueError):
    """A partial file was written with other settings than the run that would resume from it."""


def feature_arrays(descriptors: np.ndarray, ids: Sequence[str], failed: Sequence[tuple[str, str]],
                   meta: Mapping) -> dict[str, np.ndarray]:
    """The arrays of a feature file (what `remap-extract` writes and `remap-index` reads): `descriptors`
    (N, D) float32, `ids` (N,), `failed` (M,) and `failed_reasons` (M,) strings, `meta` (JSON text)."""
    return dict(
        descriptors=np.asarray(descriptors, np.float32),
        ids=np.array(list(ids), dtype=str).reshape(-1),
        failed=np.array([f[0] for f in failed], dtype=str).reshape(-1),
        failed_reasons=np.array([f[1] for f in failed], dtype=str).reshape(-1),
        meta=np.array(atomic.to_json(meta, indent=None, sort_keys=True)),
    )


def describe_resumable(
    extractor: Extractor,
    sources: Sequence[Any],
    ids: Sequence[str],
    *,
    bboxes: Sequence[Any] | None = None,
    partial: str | None = None,
    meta: Mapping | None = None,
    save_every: int = 50,
    progress: Progress = False,
    on_mismatch: str = "raise",
    on_failed: Callable[[str, str], None] | None = None,
) -> tuple[np.ndarray, list[str], list[tuple[str, str]], int]:
    """Describes `sources` (ids: one unique string per source), keeping progress in the feature file
    `partial` so that an interrupted run resumes where it stopped.

    Finished rows are written to `partial` (atomically) every `save_every` batches and when the run is
    interrupted; a later call with the same `meta` describes only what is missing. A `partial` written with
    another `meta` raises ResumeMismatchError (`on_mismatch="raise"`) or is ignored (`"restart"`).
    `on_failed(id, reason)` is called for each input that cannot be read.

    In a multi-process job (the extractor's `process_share`) every process describes its share, keeps its own
    partial file (`partial_file_of_process`) and the results are gathered: every process returns all of them.

    Returns:
      (descriptors (N_ok, D) float32 in input order, their ids, failed [(id, reason)], images described now
      by this process). The partial file is left in place: the caller removes it once the result is saved.
    """
    ids = [str(i) for i in ids]
    if len(ids) != len(sources):
        raise ValueError(f"ids: expected one per source ({len(sources)}), got {len(ids)}")
    mine = set(extractor._share(len(sources)))
    if partial and extractor.process_share:
        partial = partial_file_of_process(partial)
    meta = json.loads(atomic.to_json(meta or {}, indent=None, sort_keys=True))
    done_ids: list[str] = []
    done_desc: list[np.ndarray] = []
    failed: list[tuple[str, str]] = []
    if partial and os.path.exists(partial):
        with np.load(partial) as f:
            old_meta = json.loads(str(f["meta"]))
            if old_meta == meta:
                done_ids = [str(i) for i in f["ids"]]
                done_desc = [f["descriptors"]]
                failed = list(zip((str(i) for i in f["failed"]), (str(r) for r in f["failed_reasons"]),
                                  strict=True))
            elif on_mismatch == "raise":
                raise ResumeMismatchError(f"{partial} was written with other settings ({old_meta})")
    finished = set(done_ids) | {i for i, _ in failed}
    todo = [k for k, i in enumerate(ids) if i not in finished and k in mine]
    since_save = 0
    described_now = 0

    def save_partial():
        desc = np.concatenate(done_desc) if done_desc else np.zeros((0, extractor.dim), np.float32)
        atomic.save_npz(partial, **feature_arrays(desc, done_ids, failed, meta))

    try:
        for item in extractor.describe_iter(sources, bboxes, indices=todo, progress=progress, share=False):
            if isinstance(item, Failed):
                failed.append((ids[item.index], item.reason))
                if on_failed is not None:
                    on_failed(ids[item.index], item.reason)
                continue
            done_ids.extend(ids[k] for k in item.indices)
            done_desc.append(item.descriptors)
            described_now += len(item.indices)
            since_save += 1
            if partial and since_save >= save_every:
                save_partial()
                since_save = 0
    except BaseException:
        if partial and (done_ids or failed):
            save_partial()
        raise
    desc = np.concatenate(done_desc) if done_desc else np.zeros((0, extractor.dim), np.float32)
    if extractor.process_share:
        from remap_jax.runtime import distributed

        parts = distributed.allgather_json({"ids": done_ids, "failed": failed})
        desc = distributed.allgather_rows(desc, [len(part["ids"]) for part in parts])
        done_ids = [i for part in parts for i in part["ids"]]
        failed = [(i, r) for part in parts for i, r in part["failed"]]
    order = {i: k for k, i in enumerate(ids)}
    perm = np.argsort([order[i] for i in done_ids], kind="stable")
    return desc[perm], [done_ids[k] for k in perm], failed, described_now


def partial_file_of_process(path: str) -> str:
    """`db.partial.npz` -> `db.partial-p1of2.npz`: where process 1 of 2 keeps its share's progress."""
    stem = path[:-4] if path.endswith(".npz") else path
    return f"{stem}-p{jax.process_index()}of{jax.process_count()}.npz"


def _describe_fn(model: RetrievalModel, weights: tuple[float, ...] | None, platform: str):
    """jit(per-scale variables, per-scale uint8 batches -> (B, D)) with `remap_jax.runtime.xla`'s options for
    `platform`, shared by extractors of equal models so that rebuilding an Extractor reuses the compiled
    programs."""
    try:
        return _describe_fn_cached(model, weights, platform)
    except TypeError:  # an unhashable field (e.g. a custom module holding an array): no sharing
        return _make_describe_fn(model, weights, platform)


def _make_describe_fn(model, weights, platform):
    def describe(variables_per_scale, batches):
        descs = [model.apply(v, b) for v, b in zip(variables_per_scale, batches, strict=True)]
        return combine_scales(descs, weights)

    return xla.jit(describe, platform=platform)


_describe_fn_cached = functools.lru_cache(maxsize=16)(_make_describe_fn)


@functools.lru_cache(maxsize=16)
def _regions_fn(model: RetrievalModel, platform: str):
    """jit(variables, uint8 batch -> layer -> (B, R, C)): the head's R-MAC grid on every tapped layer."""
    from remap_jax.nn import heads

    head = getattr(model, "head", None)
    if not hasattr(head, "levels"):
        raise ValueError(f"output='regions': the model's head {type(head).__name__} has no R-MAC region "
                         "grid; use a remap or rmac head")

    def regions(variables_per_scale, batches):
        (variables,), (batch,) = variables_per_scale, batches
        features = model.apply(variables, batch, method=RetrievalModel.features)
        return heads.region_descriptors(features, tuple(model.taps), head.levels, head.overlap,
                                        head.include_global)

    return xla.jit(regions, platform=platform)


def _plain(tree):
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def _addressable(x):
    """A jax.Array replicated over devices of several processes -> this process's copy; others unchanged."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x.addressable_data(0)
    return jnp.asarray(x)
