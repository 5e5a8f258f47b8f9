"""Drawing primitives of the synthetic views: sampling a homography per target difficulty, warping,
backgrounds (textures, gradients, clutter cut from a pool of images), occluders, photometric change, and the
visibility of the canonical view in the result.

Images are float (H, W, 3) in [0, 1] unless named uint8; homographies are 3x3 matrices mapping canonical
(x, y, 1) pixel coordinates to output (x, y, w). Every random draw comes from the ``rng`` passed in.
"""

from __future__ import annotations

import numpy as np

from remap_jax.data.synthetic import photos
from remap_jax.data.synthetic.config import BACKGROUND_PHOTOS, EASY, HARD, JUNK

# Sampling ranges per target difficulty: magnification (1 = the canonical view fits the frame), centre
# offset as a fraction of the canonical size, rotation (degrees), perspective strength, occluders.
VIEW_PARAMS = {
    "query": dict(mag=(0.55, 0.8), offset=0.08, rot=5.0, persp=0.1, occluders=0, photometric=0.3),
    EASY: dict(mag=(0.7, 1.5), offset=0.2, rot=12.0, persp=0.25, occluders=1, photometric=0.6),
    HARD: dict(mag=(1.6, 2.6), offset=0.45, rot=35.0, persp=0.5, occluders=3, photometric=1.0),
    JUNK: dict(mag=(2.5, 4.0), offset=0.9, rot=50.0, persp=0.5, occluders=3, photometric=1.0),
}
# views="strong": queries as above; the index views zoom out further (landmark small in clutter) and in
# further, turn and tilt more and are occluded more often.
VIEW_PARAMS_STRONG = {
    "query": VIEW_PARAMS["query"],
    EASY: dict(mag=(0.45, 1.6), offset=0.3, rot=20.0, persp=0.35, occluders=2, photometric=0.8),
    HARD: dict(mag=(1.6, 3.0), offset=0.5, rot=45.0, persp=0.6, occluders=4, photometric=1.0),
    JUNK: dict(mag=(2.8, 4.5), offset=0.9, rot=60.0, persp=0.6, occluders=4, photometric=1.0),
}


def view_shape(rng: np.random.Generator, long_side: int) -> tuple[int, int]:
    short = int(round(long_side * 0.75))
    return (short, long_side) if rng.random() < 0.75 else (long_side, short)


def homography(rng, src_shape, out_shape, params) -> tuple[np.ndarray, float]:
    """3x3 matrix mapping canonical (x, y, 1) to output (x, y, w) pixel coordinates."""
    hc, wc = src_shape
    ho, wo = out_shape
    mag = rng.uniform(*params["mag"])
    scale = mag * min(wo / wc, ho / hc)
    centre = np.array([wc / 2, hc / 2]) + rng.uniform(-1, 1, 2) * params["offset"] * np.array([wc, hc]) / 2
    theta = np.deg2rad(rng.uniform(-params["rot"], params["rot"]))
    persp = rng.uniform(-1, 1, 2) * params["persp"] / max(wc, hc)
    to_origin = np.array([[1, 0, -centre[0]], [0, 1, -centre[1]], [0, 0, 1]], dtype=np.float64)
    tilt = np.array([[1, 0, 0], [0, 1, 0], [persp[0], persp[1], 1]], dtype=np.float64)
    c, s = np.cos(theta), np.sin(theta)
    rot_scale = np.array([[c * scale, -s * scale, 0], [s * scale, c * scale, 0], [0, 0, 1]])
    to_frame = np.array([[1, 0, wo / 2], [0, 1, ho / 2], [0, 0, 1]], dtype=np.float64)
    # tilt is applied around the chosen centre so the view stays centred on it
    return to_frame @ rot_scale @ tilt @ to_origin, float(np.rad2deg(abs(theta)))


def apply_homography(h: np.ndarray, xy: np.ndarray) -> np.ndarray:
    pts = np.concatenate([xy, np.ones((xy.shape[0], 1))], axis=1) @ h.T
    w = pts[:, 2:3]
    w = np.where(np.abs(w) < 1e-9, 1e-9, w)
    return pts[:, :2] / w


def warp(src: np.ndarray, h: np.ndarray, out_shape) -> tuple[np.ndarray, np.ndarray]:
    """Warps a uint8 image by the homography; returns float image in [0, 1] and the coverage mask."""
    from skimage.transform import ProjectiveTransform, warp

    inverse = ProjectiveTransform(matrix=np.linalg.inv(h))
    rgba = np.concatenate([src.astype(np.float32) / 255.0, np.ones(src.shape[:2] + (1,), np.float32)], -1)
    out = warp(rgba, inverse, output_shape=out_shape, order=1, mode="constant", cval=0.0)
    return out[..., :3], out[..., 3]


def warp_fast(src: np.ndarray, h: np.ndarray, out_shape) -> tuple[np.ndarray, np.ndarray]:
    """:func:`warp` through PIL's perspective transform (several times faster; views="strong" only)."""
    from PIL import Image

    inverse = np.linalg.inv(h)
    inverse = inverse / inverse[2, 2]
    rgba = np.concatenate([src, np.full(src.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    out = Image.fromarray(rgba, "RGBA").transform(
        (out_shape[1], out_shape[0]),
        Image.Transform.PERSPECTIVE,
        tuple(float(v) for v in inverse.ravel()[:8]),
        resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0, 0),
    )
    out = np.asarray(out, np.float32) / 255.0
    return out[..., :3], out[..., 3]


def clutter(rng, out_shape, pool: tuple[np.ndarray, ...]) -> np.ndarray:
    """views="strong" background: a random crop of an image of ``pool`` (uint8; a split's material cells and
    the textures), flipped or not, resized and tinted, or 1 time in 5 a colour gradient. Float (H, W, 3)."""
    from PIL import Image

    ho, wo = out_shape
    if pool and rng.random() < 0.8:
        src = pool[rng.integers(len(pool))]
        frac = rng.uniform(0.4, 1.0)
        ch, cw = max(8, int(src.shape[0] * frac)), max(8, int(src.shape[1] * frac))
        y, x = rng.integers(0, src.shape[0] - ch + 1), rng.integers(0, src.shape[1] - cw + 1)
        crop = src[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        img = Image.fromarray(np.ascontiguousarray(crop)).resize((wo, ho), Image.Resampling.BILINEAR)
        return np.asarray(img, np.float32) / 255.0 * rng.uniform(0.5, 1.0, 3)
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    t = np.linspace(0, 1, wo)[None, :, None] * np.ones((ho, 1, 1))
    return c0 * (1 - t) + c1 * t


def background(rng, out_shape, canonical_size) -> np.ndarray:
    """A random crop of a texture photo, or a smooth colour gradient, as float (H, W, 3) in [0, 1]."""
    ho, wo = out_shape
    if rng.random() < 0.7:
        tex = photos.load_photo(BACKGROUND_PHOTOS[rng.integers(len(BACKGROUND_PHOTOS))], canonical_size)
        y = rng.integers(0, max(1, tex.shape[0] - ho // 2))
        x = rng.integers(0, max(1, tex.shape[1] - wo // 2))
        crop = tex[y : y + ho // 2, x : x + wo // 2]
        from skimage.transform import resize

        img = resize(crop.astype(np.float32) / 255.0, (ho, wo), order=1, anti_aliasing=False)
        return img * rng.uniform(0.4, 1.0, 3)  # tinted
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    t = np.linspace(0, 1, wo)[None, :, None] * np.ones((ho, 1, 1))
    return c0 * (1 - t) + c1 * t


def occlude(rng, img, max_count, fill_image) -> np.ndarray:
    """Draws up to max_count rectangles/ellipses, each filled with ``fill_image(rng, (H, W))`` or a flat
    colour; returns the boolean occlusion mask (H, W)."""
    ho, wo = img.shape[:2]
    mask = np.zeros((ho, wo), bool)
    yy, xx = np.mgrid[0:ho, 0:wo]
    for _ in range(rng.integers(0, max_count + 1)):
        hh, ww = rng.uniform(0.1, 0.45) * ho, rng.uniform(0.1, 0.45) * wo
        cy, cx = rng.uniform(0, ho), rng.uniform(0, wo)
        if rng.random() < 0.5:
            m = (np.abs(yy - cy) < hh / 2) & (np.abs(xx - cx) < ww / 2)
        else:
            m = ((yy - cy) / (hh / 2)) ** 2 + ((xx - cx) / (ww / 2)) ** 2 < 1.0
        fill = fill_image(rng, (ho, wo)) if rng.random() < 0.5 else rng.uniform(0, 1, 3)
        img[m] = fill[m] if np.ndim(fill) == 3 else fill
        mask |= m
    return mask


def photometric(rng, img, strength) -> tuple[np.ndarray, bool]:
    """Brightness, contrast, gamma, colour cast, blur and noise; returns (image, whether it is strong)."""
    from scipy.ndimage import gaussian_filter

    gain = 1.0 + rng.uniform(-0.35, 0.35) * strength
    contrast = 1.0 + rng.uniform(-0.5, 0.4) * strength
    gamma = np.exp(rng.uniform(-0.5, 0.5) * strength)
    cast = 1.0 + rng.uniform(-0.15, 0.15, 3) * strength
    mean = img.mean()
    img = ((img - mean) * contrast + mean) * gain * cast
    img = np.clip(img, 0, 1) ** gamma
    sigma = rng.uniform(0, 1.5) * strength
    if sigma > 0.3:
        img = gaussian_filter(img, sigma=(sigma, sigma, 0))
    img = img + rng.normal(0, 0.03 * strength * rng.random(), img.shape)
    strong = abs(gain - 1) > 0.25 or contrast < 0.7 or abs(np.log(gamma)) > 0.35 or sigma > 1.2
    return np.clip(img, 0, 1), bool(strong)


def visibility(h, src_shape, out_shape, occluded: np.ndarray) -> float:
    """Fraction of a 24x24 grid over the canonical view that lands inside the frame and is not occluded."""
    hc, wc = src_shape
    ho, wo = out_shape
    gy, gx = np.meshgrid((np.arange(24) + 0.5) * hc / 24, (np.arange(24) + 0.5) * wc / 24, indexing="ij")
    pts = apply_homography(h, np.stack([gx.ravel(), gy.ravel()], axis=1))
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < wo) & (pts[:, 1] >= 0) & (pts[:, 1] < ho)
    xi = np.clip(pts[:, 0].astype(int), 0, wo - 1)
    yi = np.clip(pts[:, 1].astype(int), 0, ho - 1)
    visible = inside & ~occluded[yi, xi]
    return float(visible.mean())
