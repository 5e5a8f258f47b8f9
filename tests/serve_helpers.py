"""A tiny collection for the service's tests: photo crops as image files, an exported REMAP model with
non-uniform region weights and a whitening (so region contributions are non-trivial), and its index."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

SIZE = (96, 128)  # (height, width): Lite0 maps of 3x4, 2 R-MAC levels
TAPS = ("blocks.15", "head")
OUT_DIM = 48
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def _crops() -> dict[str, np.ndarray]:
    """Three overlapping crops of each of four scikit-image photos, 120x160 pixels (12 images)."""
    import skimage.data

    out = {}
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=-1)
        photo = np.asarray(Image.fromarray(photo[..., :3]).resize((320, 240)))
        for j, (y, x) in enumerate([(0, 0), (60, 80), (120, 160)]):
            out[f"{name}/{j}.jpg"] = np.ascontiguousarray(photo[y:y + 120, x:x + 160])
    return out


def build_collection(root: str) -> dict:
    """Writes images/, queries/, export/ and index/ under `root` (once per root); returns their paths."""
    from remap_jax import Extractor, Index
    from remap_jax.model import save_exported
    from remap_jax.nn.regions import num_regions

    paths = {k: os.path.join(root, k) for k in ("images", "queries", "export", "index")}
    if os.path.isfile(os.path.join(paths["index"], "index.json")):
        return paths
    crops = _crops()
    ids = sorted(crops)
    for image_id in ids:
        path = os.path.join(paths["images"], image_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(crops[image_id]).save(path, quality=95)
    os.makedirs(paths["queries"], exist_ok=True)
    # a query: the middle crop of chelsea, shifted and a little smaller, as PNG
    photo = np.asarray(Image.open(os.path.join(paths["images"], "chelsea/1.jpg")))
    Image.fromarray(photo[10:110, 10:150]).save(os.path.join(paths["queries"], "chelsea.png"))
    rng = np.random.default_rng(0)
    regions = num_regions(SIZE[0] // 32, SIZE[1] // 32, levels=2)
    alpha = {tap: rng.uniform(0.2, 1.5, regions).astype(np.float32) for tap in TAPS}
    dim = 320 + 1280
    w = (rng.standard_normal((OUT_DIM, dim)) / np.sqrt(dim)).astype(np.float32)
    b = (0.05 * rng.standard_normal(OUT_DIM)).astype(np.float32)
    ex = Extractor.from_pretrained("efficientnet_lite0", weights="installed", taps=TAPS, levels=2,
                                   alpha=alpha, image_size=SIZE)
    variables = {**ex.variables, "params": {**ex.variables["params"], "head": {
        **ex.variables["params"]["head"], "whiten": {"kernel": w.T, "bias": b}}}}
    config = {"arch": "efficientnet_lite0", "taps": list(TAPS), "head": "remap", "levels": 2, "whiten": True,
              "out_dim": OUT_DIM, "image_size": list(SIZE)}
    save_exported(paths["export"], config, variables)
    served = serving_extractor(paths["export"])
    descriptors = served([os.path.join(paths["images"], i) for i in ids])
    Index.build(descriptors, ids=ids, method="exact").save(paths["index"])
    return paths


def serving_extractor(export: str):
    """The extractor the tests serve with: the export, one static shape (resize="exact"), batch 1."""
    from remap_jax import Extractor

    return Extractor.from_checkpoint(export, resize="exact", batch_size=1, workers=1)


def make_service(paths: dict, **options):
    from remap_jax import Index
    from remap_jax.serve.service import SearchService

    return SearchService(serving_extractor(paths["export"]), Index.load(paths["index"]), paths["images"],
                         **options)


def encoded(array: np.ndarray, fmt: str = "PNG", **save) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **save)
    return buf.getvalue()
