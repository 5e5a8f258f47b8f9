"""`SearchService`: an Extractor, an Index over images in one folder, the request batcher and the caches.

Arrays in, arrays out; the HTTP layer (`remap_jax.serve.app`) only parses requests and formats answers.
Images of the index are found through the index's id list only: an id is a path relative to the images
folder (what `remap-extract --images DIR` writes), looked up in that list and resolved inside the folder.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import mimetypes
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from remap_jax.data.images import crop_bbox, encode_jpeg, load_rgb, resize_long_side, resize_to
from remap_jax.describe.extractor import Extractor
from remap_jax.describe.pipeline import target_size
from remap_jax.serve import heatmap
from remap_jax.serve.batching import Batcher, BatchPolicy, default_policy
from remap_jax.serve.stats import Stats
from remap_jax.serve.uploads import UploadError, decode_image

__all__ = ["ModelMismatchError", "Query", "RERANKERS", "SearchService"]



def _superglobal(service: SearchService, descriptor: np.ndarray, positions: np.ndarray, scores: np.ndarray):
    """SuperGlobal re-ranking (`remap_jax.search.rerank`, its default K and beta) of the whole shortlist."""
    from remap_jax.search.rerank import SuperGlobal, superglobal_rerank

    options = SuperGlobal(m=len(positions), k=min(SuperGlobal.k, len(positions) - 1))
    top, top_scores = superglobal_rerank(descriptor[None], service.index.rerank_vectors(), positions[None],
                                         options)
    return top[0], top_scores[0]


#: re-ranking methods a search may ask for: name -> fn(service, query descriptor (D,), positions (M,),
#: scores (M,)) -> (positions, scores) re-ordered, or None for none. The shortlist is `rerank_depth` deep.
RERANKERS: dict[str, Callable | None] = {"none": None, "superglobal": _superglobal}


class ModelMismatchError(ValueError):
    """The model given to the service is not the one that described the index."""


@dataclasses.dataclass
class Query:
    """A described query, kept (bounded LRU) so that the page can ask why it matched a result."""

    pixels: np.ndarray  # uint8 (H, W, 3) as described (cropped and resized)
    descriptor: np.ndarray  # (D,) float32
    source: str  # "upload" or "id:<id>"
    size: tuple[int, int]  # (width, height) of the image before cropping
    box: tuple[int, int, int, int] | None
    regions: dict | None = None  # layer -> (R, C), computed on the first explain


class _LRU:
    """A dict bounded by the total bytes of its values (oldest evicted first)."""

    def __init__(self, max_bytes: int, size_of: Callable[[Any], int]):
        self.max_bytes, self._size_of = int(max_bytes), size_of
        self._items: collections.OrderedDict = collections.OrderedDict()
        self.bytes = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        with self._lock:
            if key in self._items:
                self.bytes -= self._size_of(self._items.pop(key))
            self._items[key] = value
            self.bytes += self._size_of(value)
            while self.bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self.bytes -= self._size_of(old)

    def __len__(self) -> int:
        return len(self._items)


def _query_bytes(q: Query) -> int:
    regions = sum(v.nbytes for v in q.regions.values()) if q.regions else 0
    return q.pixels.nbytes + q.descriptor.nbytes + regions


class SearchService:
    """Describes query images and searches an index with them.

    Args:
      extractor: a single-scale Extractor: the model that described the index.
      index: a `remap_jax.search.index.Index` whose ids are paths relative to `images_dir`.
      images_dir: the only folder images are read from.
      policy: the batch policy (default: `default_policy` of the extractor's platform).
      max_k, default_k: the most results a search may ask for, and what it gets when it names none.
      max_pixels: uploads (and indexed images read for "more like this") above it are refused.
      rerankers: `RERANKERS`-style table of re-ranking methods; rerank_depth: their shortlist length.
      cache_bytes: memory for described queries (kept for explanations) and for thumbnails, each.
      thumb_size: long side of thumbnails in pixels.
    """

    def __init__(self, extractor: Extractor, index, images_dir: str | os.PathLike, *,
                 policy: BatchPolicy | None = None, max_k: int = 100, default_k: int = 12,
                 max_pixels: int = 40_000_000, rerankers: Mapping[str, Callable | None] | None = None,
                 rerank_depth: int = 100, cache_bytes: int = 16 << 20, thumb_size: int = 192,
                 stats: Stats | None = None):
        if len(extractor.scales) != 1:
            raise ValueError(f"extractor: needs a single scale to serve, got scales {extractor.scales}")
        self.images_dir = os.path.realpath(os.fspath(images_dir))
        if not os.path.isdir(self.images_dir):
            raise ValueError(f"images folder {images_dir}: not found or not a folder")
        if extractor.dim != index.dim:
            raise ModelMismatchError(f"model: describes {extractor.dim}-d descriptors but the index holds "
                                     f"{index.dim}-d ones; serve the index with the model that built it")
        self.extractor = extractor
        self.index = index
        self.ids = [str(i) for i in index.ids]
        self._rows = {name: row for row, name in enumerate(self.ids)}
        self.max_k = int(min(max_k, len(self.ids)))
        self.default_k = int(min(default_k, self.max_k))
        self.max_pixels = int(max_pixels)
        self.rerankers = dict(RERANKERS if rerankers is None else rerankers)
        self._depth = int(min(len(self.ids), max(self.max_k, rerank_depth)))
        self.platform = jax.devices()[0].platform
        self.policy = policy or default_policy(self.platform)
        self.stats = stats or Stats()
        self.batcher = Batcher(self._run_batch, self.policy)
        self.thumb_size = int(thumb_size)
        self._queries = _LRU(cache_bytes, _query_bytes)
        self._thumbs = _LRU(cache_bytes, len)
        self._results = _LRU(max(1, cache_bytes // 16), lambda v: v.nbytes)  # result descriptors (explain)
        self._regions_lock = threading.Lock()
        self._map_sizes: dict[tuple[int, int], dict[str, tuple[int, int]]] = {}
        self.describe_calls = 0  # compiled describe calls made by the batcher (tests, stats)

    # ------------------------------------------------------------------------------------- start-up checks

    def shapes(self) -> list[tuple[int, int]]:
        """The (height, width) inputs are resized to that are compiled at start: landscape and portrait."""
        h, w = self.extractor.image_size
        shapes = {target_size(h, w, self.extractor.image_size, self.extractor.resize, self.extractor.bucket),
                  target_size(w, h, self.extractor.image_size, self.extractor.resize, self.extractor.bucket)}
        return sorted(shapes)

    def warmup(self) -> float:
        """Compiles every (shape, batch size) of the policy, the index search and the region pass; seconds."""
        start = time.perf_counter()
        for shape in self.shapes():
            for size in self.policy.sizes:
                np.asarray(self.extractor.describe_batch(np.zeros((size, *shape, 3), np.uint8)))
            if self.explainable() is None:
                self.extractor.regions([np.zeros((*shape, 3), np.uint8)])
        for n in sorted({1, self.policy.max_batch}):
            self.index.search_positions(np.zeros((n, self.index.dim), np.float32), self._depth)
        return time.perf_counter() - start

    def check_images(self, sample: int = 1000) -> None:
        """Every id of the index (up to `sample` spread over it) names a file inside the images folder."""
        step = max(1, len(self.ids) // sample)
        missing = [i for i in self.ids[::step] if not os.path.isfile(self._path_of(i))]
        if missing:
            raise ValueError(f"images folder {self.images_dir}: {len(missing)} of the index's ids name no "
                             f"file there, e.g. {missing[0]!r}; expected the folder given to "
                             "`remap-extract --images`")

    def check_model(self, probes: int = 2) -> None:
        """Describes a few indexed images: each must find itself among its first results with a similarity
        near 1, else the model is not the one that built the index (ModelMismatchError)."""
        rows = np.linspace(0, len(self.ids) - 1, min(probes, len(self.ids))).astype(int)
        pixels = [self.prepare(self.read_indexed(self.ids[r]), None) for r in rows]
        descriptors = [self._describe([p], record=False)[0] for p in pixels]
        positions, scores = self.index.search_positions(np.stack(descriptors), min(5, len(self.ids)))
        for row, pos, sc in zip(rows, positions, scores, strict=True):
            hit = np.flatnonzero(pos == row)
            if not hit.size or sc[hit[0]] < 0.95:
                found = f"similarity {sc[hit[0]]:.3f}" if hit.size else "not among its first results"
                raise ModelMismatchError(
                    f"model: indexed image {self.ids[row]!r} described now is {found} to its own index "
                    "entry; expected about 1.0: serve the index with the model (and image size) that "
                    "built it")

    # ---------------------------------------------------------------------------------------- describing

    def prepare(self, image: np.ndarray, box) -> np.ndarray:
        """uint8 (H, W, 3) -> cropped to `box` (x0, y0, x1, y1) and resized to the model's static shape."""
        if box is not None:
            image = crop_bbox(image, box)
        size = target_size(image.shape[0], image.shape[1], self.extractor.image_size, self.extractor.resize,
                           self.extractor.bucket)
        return resize_to(image, size)

    def _describe(self, pixels: list[np.ndarray], record: bool = True) -> np.ndarray:
        """Same-shape prepared images (n <= max batch) -> (n, D), run at the policy's padded size; `record`
        counts the call in `describe_calls` and the stats' batch-size histogram."""
        n = len(pixels)
        size = self.policy.padded(n)
        batch = np.zeros((size, *pixels[0].shape), np.uint8)
        for i, p in enumerate(pixels):
            batch[i] = p
        out = np.asarray(self.extractor.describe_batch(batch))[:n]
        if record:
            self.describe_calls += 1
            self.stats.record_batch(n, size)
        return out

    def _run_batch(self, items: list[np.ndarray]) -> list[Any]:
        """The batcher's function (worker thread): prepared images -> [(descriptor (D,), positions (M,),
        scores (M,))], one compiled call per shape present, one index search for the whole batch."""
        out: list[Any] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(items):
            groups.setdefault(p.shape, []).append(i)
        descriptors = np.zeros((len(items), self.index.dim), np.float32)
        for members in groups.values():
            descriptors[members] = self._describe([items[i] for i in members])
        positions, scores = self.index.search_positions(descriptors, self._depth)
        for i in range(len(items)):
            out[i] = (descriptors[i], positions[i], scores[i])
        return out

    async def search(self, pixels: np.ndarray, *, size: tuple[int, int], box=None, k: int | None = None,
                     rerank: str = "none", source: str = "upload") -> dict:
        """Describes prepared `pixels` (`prepare`: the image of (width, height) `size`, cropped to `box` and
        resized) and returns the `k` best matches:
        {"query": token, "results": [{"id", "score", "rank"}], "timing_ms": {...}}."""
        k = self.default_k if k is None else int(k)
        if rerank not in self.rerankers:
            raise UploadError(400, "bad_rerank",
                              f"rerank: {rerank!r}; expected one of {list(self.rerankers)}")
        start = time.perf_counter()
        descriptor, positions, scores = await self.batcher.submit(pixels)
        described = time.perf_counter()
        method = self.rerankers[rerank]
        if method is not None:
            positions, scores = method(self, descriptor, positions, scores)
        token = secrets.token_urlsafe(12)
        self._queries.put(token, Query(pixels, descriptor, source, (int(size[0]), int(size[1])),
                                       None if box is None else tuple(int(v) for v in box)))
        results = [{"rank": r + 1, "id": self.ids[p], "score": round(float(s), 6)}
                   for r, (p, s) in enumerate(zip(positions[:k], scores[:k], strict=True))]
        return {"query": token, "k": k, "rerank": rerank, "results": results,
                "timing_ms": {"queue_describe_search": round((described - start) * 1e3, 2)}}

    # ------------------------------------------------------------------------------------- indexed images

    def _path_of(self, image_id: str) -> str:
        return os.path.realpath(os.path.join(self.images_dir, image_id))

    def image_path(self, image_id: str) -> str:
        """The file of indexed image `image_id`: looked up in the index's id list, resolved inside the images
        folder (404 `unknown_id` otherwise; 404 `missing_file` if the file went away)."""
        if image_id not in self._rows:
            raise UploadError(404, "unknown_id", f"id: {image_id[:200]!r} is not in the index; expected an "
                              "id returned by /search")
        path = self._path_of(image_id)
        if not path.startswith(self.images_dir + os.sep) or not os.path.isfile(path):
            raise UploadError(404, "missing_file", f"id: {image_id[:200]!r} has no file inside the images "
                              "folder")
        return path

    def media_type(self, image_id: str) -> str:
        return mimetypes.guess_type(self.image_path(image_id))[0] or "application/octet-stream"

    def read_indexed(self, image_id: str) -> np.ndarray:
        """Indexed image `image_id` decoded (same checks as an upload)."""
        with open(self.image_path(image_id), "rb") as f:
            return decode_image(f.read(), self.max_pixels, field=f"id {image_id[:80]!r}")

    def thumbnail(self, image_id: str) -> bytes:
        """JPEG of indexed image `image_id`, long side at most `thumb_size` (cached)."""
        cached = self._thumbs.get(image_id)
        if cached is None:
            img = resize_long_side(load_rgb(self.image_path(image_id)), self.thumb_size, upscale=False)
            cached = encode_jpeg(img, quality=85)
            self._thumbs.put(image_id, cached)
        return cached

    # ------------------------------------------------------------------------------------------- heatmap

    def explainable(self) -> str | None:
        """None when the heatmap can be computed, else why not."""
        from remap_jax.nn.heads import REMAPHead

        head = self.extractor.model.head
        if not isinstance(head, REMAPHead):
            return (f"the model's head is {type(head).__name__}; region contributions need a REMAP head "
                    "(region weights alpha and whitening)")
        return None

    def _maps(self, shape: tuple[int, int]) -> dict[str, tuple[int, int]]:
        """layer -> (h, w) feature-map size for inputs of `shape` (height, width)."""
        if shape not in self._map_sizes:
            from remap_jax.model import RetrievalModel

            model = self.extractor.model
            fn = lambda v, x: model.apply(v, x, method=RetrievalModel.features)  # noqa: E731
            pixels = jax.ShapeDtypeStruct((1, *shape, 3), np.uint8)
            maps = jax.eval_shape(fn, self.extractor.variables, pixels)
            self._map_sizes[shape] = {layer: tuple(int(d) for d in m.shape[1:3]) for layer, m in maps.items()}
        return self._map_sizes[shape]

    async def explain(self, token: str, result_id: str) -> dict:
        """Each region's share of the similarity between described query `token` and indexed `result_id`,
        and the learned region weights, as maps over the query (see `remap_jax.serve.heatmap`)."""
        from remap_jax.nn.regions import rmac_regions

        reason = self.explainable()
        if reason is not None:
            raise UploadError(422, "no_heatmap", f"heatmap: unavailable: {reason}")
        query = self._queries.get(token)
        if query is None:
            raise UploadError(404, "unknown_query", f"query: {token[:40]!r} is unknown or expired (the "
                              "service keeps recent queries only); search again")
        if result_id not in self._rows:
            raise UploadError(404, "unknown_id", f"result: {result_id[:200]!r} is not in the index")
        result = self._results.get(result_id)
        if result is None:
            pixels = await asyncio.to_thread(lambda: self.prepare(self.read_indexed(result_id), None))
            result, _, _ = await self.batcher.submit(pixels)
            self._results.put(result_id, result)
        if query.regions is None:
            query.regions = await asyncio.to_thread(self._regions, query.pixels)
            self._queries.put(token, query)  # counts the regions' bytes in the cache's budget
        head = self.extractor.model.head
        layers = tuple(head.layers)
        shape = query.pixels.shape[:2]
        maps = self._maps(shape)
        boxes = {layer: rmac_regions(*maps[layer], head.levels, head.overlap, head.include_global)
                 for layer in layers}
        alpha, kernel, bias = heatmap.head_parameters(
            self.extractor.variables["params"]["head"], layers, {lay: len(boxes[lay]) for lay in layers},
            head.whiten)
        parts = heatmap.contributions(query.regions, alpha, kernel, bias, result, layers)
        grid = tuple(max(m[i] for m in maps.values()) for i in (0, 1))
        share = sum(heatmap.cell_map(boxes[lay], parts.regions[lay], maps[lay], grid) for lay in layers)
        total_alpha = sum(a.sum() for a in alpha.values()) or 1.0
        weights = sum(heatmap.cell_map(boxes[lay], alpha[lay] / total_alpha, maps[lay], grid)
                      for lay in layers)
        regions = []
        for lay in layers:
            h, w = maps[lay]
            for i, (y0, x0, bh, bw) in enumerate(boxes[lay]):
                regions.append({"layer": lay, "index": i, "weight": round(float(alpha[lay][i]), 6),
                                "share": round(float(parts.regions[lay][i]), 6),
                                "box": [round(x0 / w, 4), round(y0 / h, 4), round((x0 + bw) / w, 4),
                                        round((y0 + bh) / h, 4)]})
        return {
            "query": token, "result": result_id,
            "similarity": round(parts.total, 6),
            "regions_total": round(parts.total - parts.bias, 6),
            "bias": round(parts.bias, 6),
            "descriptor_error": float(np.abs(parts.descriptor - query.descriptor).max()),
            "whitening": kernel is not None,
            "query_size": list(query.size), "box": None if query.box is None else list(query.box),
            "grid": {"height": grid[0], "width": grid[1],
                     "share": np.round(share, 6).tolist(), "weights": np.round(weights, 6).tolist()},
            "regions": regions,
        }

    def _regions(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        with self._regions_lock:
            out = self.extractor.regions([pixels])
        return {layer: v[0] for layer, v in out.items()}
