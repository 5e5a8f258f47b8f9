r"""JPEG draft decoding: decode speed and the descriptor change it causes, against full decoding.

    python benchmarks/decode_bench.py --out docs/decode_bench.json            # all parts, minutes
    python benchmarks/decode_bench.py --out /tmp/d.json --quick               # speed only, seconds
    python benchmarks/decode_bench.py --out /tmp/r.json --skip-speed --archs none \
        --ranks synthetic_landmarks/hard                                      # rank agreement, minutes

Sources are JPEGs (quality 90) made from scikit-image's photos (or, without scikit-image, smooth procedural
scenes) in a temporary folder:

- speed: one thread, `remap_jax.data.images.decode_resized` to 1024x768 (the Extractor's default), from
  1024x768, 2048x1536 and 4032x3024 JPEGs, `draft=False` (every pixel, what `load_rgb` + `resize_to` did)
  vs `draft=True`; images/s, best of `--repeats` passes over the files.
- descriptor change: `Extractor(draft=True)` vs `Extractor(draft=False)` on the same files at 1024x768,
  EfficientNet-Lite0 with its installed ImageNet weights and ResNet-50 with random weights: cosine of each
  pair of descriptors and the largest absolute difference of a component (descriptors are unit vectors).
  Two kinds of 12-megapixel sources: the photos upscaled (smooth: no detail finer than the original's
  pixels) and mosaics of the photos at their own resolution (a photo's full detail everywhere: the harder
  case for a decoder that drops the top DCT frequencies).
- rank agreement (`--ranks TEST_SET`): every query and database image of a test set (the demo's
  `synthetic_landmarks/hard`) upscaled `--upscale` times (bicubic) into a JPEG, described at the demo's
  192x256 by the off-the-shelf Lite0 (ImageNet weights, multi-layer R-MAC) with and without draft decoding;
  revisited mAP of both, the mean overlap of their top-10 lists and the fraction of queries whose whole
  ranking is identical.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from remap_jax.data.images import decode_resized  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "camera")  # bundled with scikit-image (no download)
SOURCE_SIZES = ((768, 1024), (1536, 2048), (3024, 4032))  # (height, width)
TARGET = (768, 1024)


def _procedural(seed: int, h: int = 384, w: int = 512) -> np.ndarray:
    """A smooth colour scene with some edges, when scikit-image's photos are not installed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        for _ in range(6):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.3) * w
            img[..., c] += rng.uniform(30, 90) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
    img += 40 * (np.sin(x / rng.uniform(3, 12)) > 0)[..., None]  # stripes: some high frequencies
    return np.clip(img, 0, 255).astype(np.uint8)


def photos(count: int = len(PHOTOS)) -> list[np.ndarray]:
    """Up to `count` uint8 (H, W, 3) photos from scikit-image (grayscale ones as RGB), else procedural."""
    try:
        import skimage.data
    except ImportError:
        return [_procedural(i) for i in range(count)]
    out = []
    for name in PHOTOS[:count]:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        out.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    return out


def mosaic(images: list[np.ndarray], size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A (height, width) = `size` tiling of crops of `images` at their own resolution (no resampling)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((*size, 3), np.uint8)
    tile = min(min(img.shape[:2]) for img in images)
    for y in range(0, size[0], tile):
        for x in range(0, size[1], tile):
            img = images[rng.integers(len(images))]
            oy, ox = rng.integers(0, img.shape[0] - tile + 1), rng.integers(0, img.shape[1] - tile + 1)
            piece = img[oy : oy + tile, ox : ox + tile][: size[0] - y, : size[1] - x]
            out[y : y + piece.shape[0], x : x + piece.shape[1]] = piece
    return out


def write_jpegs(folder: str, images: list[np.ndarray], size: tuple[int, int], prefix: str = "photo",
                quality: int = 90, resize: bool = True) -> list[str]:
    """Writes each image, resized (bicubic) to `size` = (height, width) unless `resize=False`, as a JPEG in
    `folder`; returns the paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        pil = Image.fromarray(img)
        if resize and pil.size != (size[1], size[0]):
            pil = pil.resize((size[1], size[0]), Image.Resampling.BICUBIC)
        path = os.path.join(folder, f"{prefix}_{size[1]}x{size[0]}_{i}.jpg")
        pil.save(path, quality=quality)
        paths.append(path)
    return paths


def decode_speed(paths: list[str], target=TARGET, draft: bool = True, repeats: int = 2) -> float:
    """images/s of `decode_resized(path, [target])` on one thread, best of `repeats` passes."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in paths:
            decode_resized(p, [target], draft=draft)
        best = min(best, time.perf_counter() - t0)
    return len(paths) / best


def speed_table(folder: str, images: list[np.ndarray], repeats: int) -> list[dict]:
    rows = []
    for size in SOURCE_SIZES:
        paths = write_jpegs(folder, images, size)
        full = decode_speed(paths, draft=False, repeats=repeats)
        drafted = decode_speed(paths, draft=True, repeats=repeats)
        scale = decode_resized(paths[0], [TARGET]).draft_scale
        rows.append({"source": f"{size[1]}x{size[0]}", "draft_scale": scale, "full_images_per_s": full,
                     "draft_images_per_s": drafted, "speedup": drafted / full})
    return rows


def benchmark_extractor(arch: str, **options):
    """(`Extractor.from_pretrained(arch, weights, **options)`, weights path or None): random weights, except
    Lite0's from its installed package when present (the benchmarks' models; the suite's too)."""
    from remap_jax import Extractor
    from remap_jax.nn.backbones import WeightImportError, pretrained_path

    weights = None
    if arch == "efficientnet_lite0":
        try:
            weights = pretrained_path(arch)
        except WeightImportError:
            weights = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no weights given, using a random backbone": intended here
        return Extractor.from_pretrained(arch, weights, **options), weights


def _extractors(arch: str, image_size=TARGET):
    from remap_jax import Extractor

    full, weights = benchmark_extractor(arch, image_size=image_size, batch_size=2, workers=2, draft=False)
    drafted = Extractor(full.model, full.variables, image_size=image_size, batch_size=2, workers=2,
                        draft=True)
    return full, drafted, "ImageNet (installed)" if weights else "random"


def descriptor_change(sets: dict[str, list[str]], archs) -> list[dict]:
    rows = []
    for arch in archs:
        full, drafted, weights = _extractors(arch)
        for label, paths in sets.items():
            a, b = full(paths), drafted(paths)
            cos = np.sum(a * b, axis=1)
            rows.append({"arch": arch, "weights": weights, "sources": label, "images": len(paths),
                         "draft_scale": decode_resized(paths[0], [TARGET]).draft_scale,
                         "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                         "max_abs_diff": float(np.abs(a - b).max())})
            print(rows[-1], flush=True)
    return rows


def rank_agreement(name: str, upscale: int, image_size=(192, 256)) -> dict:
    """Draft vs full decoding of `name`'s images upscaled `upscale` times, ranked by Lite0 (see the module
    docstring)."""
    from remap_jax.data import load_test_set
    from remap_jax.evaluation import metrics
    from remap_jax.search import ranking

    test = load_test_set(name)
    full, drafted, weights = _extractors("efficientnet_lite0", image_size)
    with tempfile.TemporaryDirectory() as folder:
        def jpegs(prefix, read, count):
            images = [read(i) for i in range(count)]
            return [write_jpegs(folder, [img], (img.shape[0] * upscale, img.shape[1] * upscale),
                                prefix=f"{prefix}{i}")[0] for i, img in enumerate(images)]

        queries = jpegs("q", test.read_query, test.num_queries)
        database = jpegs("x", test.read_index, test.num_index)
        scales = [decode_resized(p, [image_size]).draft_scale for p in queries + database]
        out = {}
        for label, extractor in (("full", full), ("draft", drafted)):
            ranks = ranking.rank_database(extractor(queries), extractor(database))
            out[label] = ranks, metrics.evaluate_revisited(ranks, test.gnd)
    (full_ranks, full_maps), (draft_ranks, draft_maps) = out["full"], out["draft"]
    overlap = [len(np.intersect1d(full_ranks[:10, j], draft_ranks[:10, j])) / 10
               for j in range(full_ranks.shape[1])]
    return {"test_set": name, "upscale": upscale, "weights": weights, "queries": test.num_queries,
            "database": test.num_index, "draft_scales": sorted(set(scales)),
            **{f"{s}_mAP_full": full_maps[s]["mAP"] for s in ("easy", "medium", "hard")},
            **{f"{s}_mAP_draft": draft_maps[s]["mAP"] for s in ("easy", "medium", "hard")},
            "top10_overlap": float(np.mean(overlap)),
            "identical_ranking": float(np.mean(np.all(full_ranks == draft_ranks, axis=0)))}


def format_tables(report: dict) -> str:
    lines = ["| source JPEG | draft scale | full decode images/s | draft images/s | speedup |",
             "|---|---:|---:|---:|---:|"]
    for r in report["speed"]:
        lines.append(f"| {r['source']} | 1/{r['draft_scale']} | {r['full_images_per_s']:.1f} | "
                     f"{r['draft_images_per_s']:.1f} | {r['speedup']:.2f}x |")
    if report.get("descriptors"):
        lines += ["", "| model | sources | images | draft scale | min cosine | mean cosine | max abs diff |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in report["descriptors"]:
            lines.append(f"| {r['arch']} ({r['weights']}) | {r['sources']} | {r['images']} | "
                         f"1/{r['draft_scale']} | {r['min_cosine']:.5f} | {r['mean_cosine']:.5f} | "
                         f"{r['max_abs_diff']:.4f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the report here as JSON")
    p.add_argument("--quick", action="store_true", help="decode speed only, 4 photos")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--archs", default="efficientnet_lite0,resnet50",
                   help="models of the descriptor change; 'none' skips it")
    p.add_argument("--skip-speed", action="store_true", help="no decode-speed table")
    p.add_argument("--ranks", help="a test set for the rank agreement, e.g. synthetic_landmarks/hard")
    p.add_argument("--upscale", type=int, default=8, help="upscaling of the test set's images (--ranks)")
    args = p.parse_args(argv)
    import platform

    images = photos(4 if args.quick else len(PHOTOS))
    report = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_average": os.getloadavg()[0], "photos": len(images)}
    with tempfile.TemporaryDirectory() as folder:
        report["speed"] = [] if args.skip_speed else speed_table(folder, images, args.repeats)
        print(format_tables(report), flush=True)
        if not args.quick and args.archs != "none":
            big = SOURCE_SIZES[-1]
            mosaics = [mosaic(images, big, seed=i) for i in range(4)]
            sets = {"2048x1536 upscaled": write_jpegs(folder, images, SOURCE_SIZES[1]),
                    "4032x3024 upscaled": write_jpegs(folder, images, big),
                    "4032x3024 mosaic at native detail": write_jpegs(folder, mosaics, big, prefix="mosaic",
                                                                     resize=False)}
            report["descriptors"] = descriptor_change(sets, args.archs.split(","))
    if args.ranks:
        report["ranks"] = rank_agreement(args.ranks, args.upscale)
        print(report["ranks"], flush=True)
    report["load_average_end"] = os.getloadavg()[0]
    print(format_tables(report))
    if args.out:
        from remap_jax.runtime import atomic

        atomic.write_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
