"""Rendering one image of the dataset: the canonical view of a landmark (a photo, a cell or a training
collage), a view of it (:func:`render_view`, its difficulty measured from what is visible) or a distractor.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from remap_jax.data.synthetic import photos
from remap_jax.data.synthetic.config import (
    BACKGROUND_PHOTOS,
    EASY,
    HARD,
    JUNK,
    LANDMARK_PHOTOS,
    SyntheticConfig,
)
from remap_jax.data.synthetic.draw import (
    VIEW_PARAMS,
    VIEW_PARAMS_STRONG,
    apply_homography,
    background,
    clutter,
    homography,
    occlude,
    photometric,
    view_shape,
    visibility,
    warp,
    warp_fast,
)
from remap_jax.data.synthetic.photos import (
    cell_image,
    cell_layout,
    collage_landmark_ids,
    landmark_split,
    material_images,
    split_landmarks,
)


@dataclasses.dataclass
class View:
    """One generated image and what is known about it."""

    image: np.ndarray  # uint8 (H, W, 3)
    landmark: int  # a photo id (LANDMARK_PHOTOS), collage id (train only) or cell id; -1 for distractors
    visibility: float  # fraction of the canonical view visible, 0 for distractors
    difficulty: str  # easy / hard / junk ("" for distractors)
    bbox: tuple[float, float, float, float]  # (x0, y0, x1, y1) of the landmark in the image


def _paste_patch(rng, canvas: np.ndarray, source: np.ndarray) -> None:
    """Pastes a randomly scaled, flipped crop of ``source`` (uint8) into ``canvas`` (float, [0, 1]) in place,
    as a rectangle or an ellipse."""
    from skimage.transform import resize

    hc, wc = canvas.shape[:2]
    ph, pw = (int(rng.uniform(0.3, 0.65) * n) for n in (hc, wc))
    scale = rng.uniform(0.6, 1.4)
    sh, sw = min(source.shape[0], max(8, int(ph * scale))), min(source.shape[1], max(8, int(pw * scale)))
    y, x = rng.integers(0, source.shape[0] - sh + 1), rng.integers(0, source.shape[1] - sw + 1)
    patch = resize(source[y : y + sh, x : x + sw].astype(np.float32) / 255.0, (ph, pw), order=1)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    top, left = rng.integers(0, hc - ph + 1), rng.integers(0, wc - pw + 1)
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:ph, 0:pw]
        mask = ((yy - ph / 2) / (ph / 2)) ** 2 + ((xx - pw / 2) / (pw / 2)) ** 2 < 1.0
    else:
        mask = np.ones((ph, pw), bool)
    region = canvas[top : top + ph, left : left + pw]
    region[mask] = patch[mask]


@functools.lru_cache(maxsize=512)
def landmark_image(landmark: int, config: SyntheticConfig) -> np.ndarray:
    """The canonical view of a landmark as uint8 (H, W, 3), long side ``config.canonical_size``.

    Ids below len(LANDMARK_PHOTOS) are the photos; the ids of :func:`collage_landmark_ids` are collages of
    4 to 7 patches cut from the training photos (this config's split; 1 in 5 from the textures), over a
    texture or gradient background. Deterministic by (seed, landmark)."""
    collages = collage_landmark_ids(config)
    if config.photo_cells:
        cells = cell_layout(config)["landmarks"]
        if landmark in cells:
            return cell_image(cells[landmark], config)
        if landmark not in collages:
            raise ValueError(
                f"landmark: expected a cell id in {min(cells)}..{max(cells)} or a collage id in "
                f"{collages[:1]}..{collages[-1:]} (photo_cells={config.photo_cells}), got {landmark}"
            )
    elif 0 <= landmark < len(LANDMARK_PHOTOS):
        return photos.load_photo(LANDMARK_PHOTOS[landmark], config.canonical_size)
    elif landmark not in collages:
        raise ValueError(
            f"landmark: expected a photo id in [0, {len(LANDMARK_PHOTOS)}) or a collage id in "
            f"{collages[:1]}..{collages[-1:]}, got {landmark}"
        )
    rng = np.random.default_rng([config.seed, 7, landmark])
    shape = (int(round(config.canonical_size * 0.75)), config.canonical_size)
    if config.photo_cells:
        # patches of the training photos' material cells only: a collage never shares pixels with a cell
        textures = tuple(photos.load_photo(name, config.canonical_size) for name in BACKGROUND_PHOTOS)
        material = material_images("train", config) or textures
        canvas = np.array(clutter(rng, shape, textures), np.float32)
        for _ in range(rng.integers(4, 8)):
            pool = material if rng.random() < 0.8 else textures
            _paste_patch(rng, canvas, pool[rng.integers(len(pool))])
    else:
        canvas = np.array(background(rng, shape, config.canonical_size), np.float32)
        train_photos = [LANDMARK_PHOTOS[i] for i in split_landmarks(config)["train"]]
        for _ in range(rng.integers(4, 8)):
            pool = train_photos if rng.random() < 0.8 else BACKGROUND_PHOTOS
            _paste_patch(rng, canvas, photos.load_photo(pool[rng.integers(len(pool))], config.canonical_size))
    out = np.round(np.clip(canvas, 0, 1) * 255.0).astype(np.uint8)
    out.setflags(write=False)
    return out


def clutter_pool(split: str, config: SyntheticConfig) -> tuple[np.ndarray, ...]:
    """What views="strong" backgrounds and occluders are cut from: the split's material cells and the
    textures (never a landmark cell, never a pixel of another split's photos)."""
    textures = tuple(photos.load_photo(name, config.canonical_size) for name in BACKGROUND_PHOTOS)
    return material_images(split, config) + textures



def _render(rng, src: np.ndarray, kind: str, config: SyntheticConfig, pool: tuple[np.ndarray, ...]):
    """Warps ``src`` into a new frame over a background, occludes it and changes its photometry.

    Returns (float image (H, W, 3) in [0, 1], homography, |rotation| degrees, occlusion mask, whether the
    photometric change is strong). ``pool``: what views="strong" cuts backgrounds and occluders from."""
    strong_views = config.views == "strong"
    params = (VIEW_PARAMS_STRONG if strong_views else VIEW_PARAMS)[kind]
    out_shape = view_shape(rng, config.image_size)
    h, rot = homography(rng, src.shape[:2], out_shape, params)
    if strong_views:
        fg, cover = warp_fast(src, h, out_shape)
        bg = clutter(rng, out_shape, pool)

        def fill(r, shape):
            return clutter(r, shape, pool)
    else:
        fg, cover = warp(src, h, out_shape)
        bg = background(rng, out_shape, config.canonical_size)

        def fill(r, shape):
            return background(r, shape, config.canonical_size)

    img = fg + bg * (1.0 - cover[..., None])
    occluded = occlude(rng, img, params["occluders"], fill)
    img, strong = photometric(rng, img, params["photometric"])
    return img, h, rot, occluded, strong


def render_view(rng: np.random.Generator, landmark: int, kind: str, config: SyntheticConfig) -> View:
    """Renders a view of a landmark; kind is "query", "easy", "hard" or "junk" (the target difficulty; the
    stored difficulty is measured from the rendered view)."""
    src = landmark_image(landmark, config)
    pool = clutter_pool(landmark_split(landmark, config), config) if config.views == "strong" else ()
    img, h, rot, occluded, strong = _render(rng, src, kind, config, pool)
    out_shape = img.shape[:2]
    vis = visibility(h, src.shape[:2], out_shape, occluded)
    if vis >= config.easy_visibility and rot <= 25.0 and not strong:
        difficulty = EASY
    elif vis >= config.junk_visibility:
        difficulty = HARD
    else:
        difficulty = JUNK
    hc, wc = src.shape[:2]
    corners = apply_homography(h, np.array([[0, 0], [wc, 0], [wc, hc], [0, hc]], dtype=np.float64))
    x0, y0 = np.clip(corners.min(axis=0), 0, [out_shape[1], out_shape[0]])
    x1, y1 = np.clip(corners.max(axis=0), 0, [out_shape[1], out_shape[0]])
    image = np.round(img * 255.0).astype(np.uint8)
    return View(image, landmark, vis, difficulty, (float(x0), float(y0), float(x1), float(y1)))


def render_distractor(rng: np.random.Generator, config: SyntheticConfig) -> View:
    """A view of no landmark: a warped texture / gradient with random shapes and photometric change, or
    (``lookalike_distractors``) a view of a material cell of the test photos, rendered like an easy or hard
    index view."""
    if config.views == "standard":
        out_shape = view_shape(rng, config.image_size)
        img = background(rng, out_shape, config.canonical_size)
        occlude(rng, img, 4, lambda r, shape: background(r, shape, config.canonical_size))
        img, _ = photometric(rng, img, 1.0)
    else:
        pool = clutter_pool("test", config)
        material = material_images("test", config)
        if material and config.lookalike_distractors and rng.random() < config.lookalike_distractors:
            src = material[rng.integers(len(material))]
            img, *_ = _render(rng, src, EASY if rng.random() < 0.5 else HARD, config, pool)
        else:
            out_shape = view_shape(rng, config.image_size)
            img = clutter(rng, out_shape, pool)
            occlude(rng, img, 4, lambda r, shape: clutter(r, shape, pool))
            img, _ = photometric(rng, img, 1.0)
    return View(np.round(img * 255.0).astype(np.uint8), -1, 0.0, "", (0.0, 0.0, 0.0, 0.0))
