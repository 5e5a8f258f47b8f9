"""The one image -> descriptor path: `Extractor`.

    from remap_jax import Extractor
    extractor = Extractor.from_pretrained("resnet101", weights="resnet101.safetensors")   # off the shelf
    extractor = Extractor.from_checkpoint("/tmp/remap_demo/export")                      # a trained model
    descriptors = extractor(images)          # uint8 (H, W, 3) arrays / paths / bytes -> (N, D) float32
    regions = extractor.regions(images)      # layer -> (N, R, C) L2-normalised region vectors (KL weights)

Everything in the project that turns images into descriptors goes through it: `remap-extract`, evaluation
(`remap_jax.evaluation.benchmark`), the trainer's mining and validation, head initialisation
(`remap_jax.fit.head_init`) and the benchmarks. It holds:

* input: arrays, paths, encoded bytes, or any lazy sequence of them (`remap_jax.data.images.ImageList` over a
  dataset's reader), read, decoded, cropped (`bboxes`) and resized to a few static shapes in `workers`
  background threads by `remap_jax.describe.pipeline` (the input pipeline training images go through too);
  partial batches are zero-padded to `batch_size`.
* device work: batches are copied to the device `prefetch` batches ahead of their use and split over the
  devices of a `data` mesh axis; pixels travel as uint8 and the model normalises them on the device. The
  compiled programs (`remap_jax.describe.programs`) are shared between extractors of equal models.
* multi-scale description (MS-REMAP) and, on request, per-region outputs instead of descriptors.
* cheap variable swaps: `extractor.set_variables(v)` (the trainer does it every epoch).
* several processes (`jax.distributed`): each process reads, decodes and describes only its contiguous share
  of the inputs on its own devices (`remap_jax.runtime.distributed.share`); `extractor(images)` and
  `.regions()` then gather every share, so all processes get the whole result.

Constructors: `remap_jax.describe.loading`; resumable extraction into feature files:
`remap_jax.describe.resumable`.
"""

from __future__ import annotations

import collections
import functools
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from remap_jax.data.images import ImageDecodeError
from remap_jax.describe import loading, pipeline, programs
from remap_jax.describe.pipeline import RESIZE_MODES, Failed, HostBatch
from remap_jax.model import RetrievalModel, scaled_size

__all__ = ["Described", "Extractor", "Progress"]

OUTPUTS = ("descriptors", "regions")
Progress = bool | Callable[[int], None]


class Described(NamedTuple):
    """A finished batch: `indices` (n,) into the input list and `descriptors`: (n, D) float32 unit rows, or
    with `output="regions"` a mapping layer -> (n, R, C) float32 region vectors."""

    indices: np.ndarray
    descriptors: Any


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
        decodes every pixel (exact, more decoding work on large photos).
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
        mesh = mesh or programs.local_mesh()
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
    # (remap_jax.describe.loading; bound here so that subclasses construct their own class)

    from_config = classmethod(loading.from_config)
    from_pretrained = classmethod(loading.from_pretrained)
    from_checkpoint = classmethod(loading.from_checkpoint)
    from_exported = classmethod(loading.from_exported)

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
            return programs.regions_fn(self.model, self._platform)
        return programs.describe_fn(self.model, self.scale_weights, self._platform)

    @property
    def resizing(self) -> pipeline.Resizing:
        """How each input is decoded and resized (`remap_jax.describe.pipeline.Resizing`)."""
        return pipeline.Resizing(self.image_size, self.resize, self.bucket, self.scales, self.draft)

    def input_batches(self, sources: Sequence[Any], bboxes: Sequence[Any] | None = None,
                      indices: Sequence[int] | None = None) -> Iterator[HostBatch | Failed]:
        """The input pipeline alone, what `describe_iter` feeds the model: reading, decoding, cropping and
        resizing in `workers` threads, zero-padded batches of `batch_size` per static shape, copied to the
        device `prefetch` batches ahead. Yields `HostBatch`es (indices, count, per-scale device batches,
        (height, width)) and `Failed` inputs; nothing is described (what a benchmark of the host side
        times)."""
        todo = list(range(len(sources))) if indices is None else [int(i) for i in indices]
        return self._device_batches(sources, bboxes, todo)

    def _device_batches(self, sources, bboxes, todo):
        host = pipeline.host_batches(sources, bboxes, todo, self.resizing, batch_size=self.batch_size,
                                     workers=self.workers, prefetch=self.prefetch)
        return pipeline.device_batches(host, self._batch_sharding, self.prefetch)

    def _variables_for(self, size: tuple[int, int]) -> tuple:
        """Per-scale variables for inputs of `size`, with REMAP region weights fitted to the map's regions
        (`remap_jax.describe.programs.fit_alpha`)."""
        if size in self._variables_by_shape:
            return self._variables_by_shape[size]
        out = tuple(programs.fit_alpha(self.model, self.variables, scaled_size(size, s), self.image_size,
                                       self._replicated) for s in self.scales)
        self._variables_by_shape[size] = out
        return out


def _plain(tree):
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def _addressable(x):
    """A jax.Array replicated over devices of several processes -> this process's copy; others unchanged."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x.addressable_data(0)
    return jnp.asarray(x)
