"""The source photos (bundled with scikit-image) and how a config divides them into landmarks.

Whole photos are the landmarks of the ``default`` configs; with ``photo_cells`` every photo is cut into a grid
of cells, a few textured cells per photo are landmarks and the others are *material* of the photo's split
(:func:`cell_layout`). Landmark ids: photos ``0 .. len(LANDMARK_PHOTOS) - 1``, then the training collages
(:func:`collage_landmark_ids`), then the cells. Images are uint8 (H, W, 3), read-only and cached.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from remap_jax.data.images import load_rgb, resize_long_side
from remap_jax.data.synthetic.config import BACKGROUND_PHOTOS, LANDMARK_PHOTOS, SyntheticConfig
from remap_jax.runtime.extras import require


def _to_rgb_uint8(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.astype(np.uint8) * 255
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.shape[-1] == 4:  # composite RGBA on white
        alpha = x[..., 3:4].astype(np.float32) / 255.0
        x = np.round(x[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(x.astype(np.uint8))


@functools.lru_cache(maxsize=64)
def load_photo(name: str, long_side: int) -> np.ndarray:
    """A bundled scikit-image photo as uint8 (H, W, 3) with the given long side."""
    skimage_data = require("skimage.data", "data", "the synthetic demo dataset (scikit-image's photos)")

    if name == "motorcycle":
        # stereo_motorcycle() also loads a disparity .npz; read just the left photo from the data folder.
        raw = load_rgb(f"{skimage_data.data_dir}/motorcycle_left.png")
    elif name in LANDMARK_PHOTOS or name in BACKGROUND_PHOTOS:
        raw = getattr(skimage_data, name)()
    else:
        raise ValueError(f"name: expected one of {LANDMARK_PHOTOS + BACKGROUND_PHOTOS}, got {name!r}")
    out = resize_long_side(_to_rgb_uint8(raw), long_side, resample="bilinear")
    out.setflags(write=False)
    return out


def split_landmarks(config: SyntheticConfig) -> dict[str, tuple[int, ...]]:
    """Disjoint landmark ids (indices into LANDMARK_PHOTOS) for test, val and train, chosen by seed."""
    perm = np.random.default_rng([config.seed, 0]).permutation(len(LANDMARK_PHOTOS))
    nt, nv = config.num_test_landmarks, config.num_val_landmarks
    return {
        "test": tuple(sorted(int(i) for i in perm[:nt])),
        "val": tuple(sorted(int(i) for i in perm[nt : nt + nv])),
        "train": tuple(sorted(int(i) for i in perm[nt + nv :])),
    }


# ------------------------------------------------------------------------------------------------ cells

_CELL_TEXTURE_SIDE = 384  # long side the photos are scored at, whatever the config's image sizes


@dataclasses.dataclass(frozen=True)
class Cell:
    """A grid cell of a landmark photo: a landmark of its own or material of the photo's split."""

    photo: int  # index into LANDMARK_PHOTOS
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) as fractions of the photo's width / height
    texture: float  # mean gradient magnitude of the grey photo inside the cell, at 384 px long side


def photo_grid(height: int, width: int, cells: int) -> tuple[int, int]:
    """(rows, cols) of the grid of about ``cells`` near-square cells over a height x width photo."""
    rows = max(1, int(round(np.sqrt(cells * height / width))))
    return rows, max(1, int(round(cells / rows)))


@functools.lru_cache(maxsize=64)
def photo_cells(photo: int, cells: int) -> tuple[Cell, ...]:
    """The grid cells of a landmark photo, row-major, with their texture scores."""
    img = load_photo(LANDMARK_PHOTOS[photo], _CELL_TEXTURE_SIDE)
    grey = img.astype(np.float32).mean(axis=-1)
    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    h, w = grey.shape
    rows, cols = photo_grid(h, w, cells)
    out = []
    for r in range(rows):
        for c in range(cols):
            y0, y1, x0, x1 = (round(r * h / rows), round((r + 1) * h / rows), round(c * w / cols),
                              round((c + 1) * w / cols))
            box = (c / cols, r / rows, (c + 1) / cols, (r + 1) / rows)
            out.append(Cell(photo, box, float(magnitude[y0:y1, x0:x1].mean())))
    return tuple(out)


@functools.lru_cache(maxsize=16)
def cell_layout(config: SyntheticConfig) -> dict:
    """Which cells are landmarks and which are material (``config.photo_cells > 0``).

    Returns ``{"landmarks": {landmark id: Cell}, "material": {split: (Cell, ...)}}``. Landmark ids follow
    the collage ids (``len(LANDMARK_PHOTOS) + num_collage_landmarks + k``), numbered photo by photo in
    LANDMARK_PHOTOS order, row-major within a photo. Per photo, ``cell_landmarks`` cells are drawn by seed
    from those with texture >= ``min_cell_texture`` (fewer when fewer qualify); every other cell is material.
    """
    if not config.photo_cells:
        raise ValueError("config.photo_cells: expected > 0 for a cell layout, got 0 (whole-photo landmarks)")
    split_of = {p: split for split, photos in split_landmarks(config).items() for p in photos}
    next_id = len(LANDMARK_PHOTOS) + config.num_collage_landmarks
    landmarks: dict[int, Cell] = {}
    material: dict[str, list[Cell]] = {"test": [], "val": [], "train": []}
    fine = config.train_photo_cells > 0

    def choose(photo: int, grid: tuple[Cell, ...], count: int, stream: int) -> set[int]:
        textured = [i for i, cell in enumerate(grid) if cell.texture >= config.min_cell_texture]
        order = np.random.default_rng([config.seed, stream, photo]).permutation(len(textured))
        return {textured[i] for i in order[:count]}

    for photo in range(len(LANDMARK_PHOTOS)):
        grid = photo_cells(photo, config.photo_cells)
        chosen = choose(photo, grid, config.cell_landmarks, 8)
        regrid = fine and split_of[photo] == "train"  # its cells come from the finer grid below
        for i, cell in enumerate(grid):
            if i in chosen:
                if not regrid:
                    landmarks[next_id] = cell
                next_id += 1  # ids are kept either way, so the other photos' ids (and views) do not move
            elif not regrid:
                material[split_of[photo]].append(cell)
    regridded = split_landmarks(config)["train"] if fine else ()  # sorted photo ids
    for photo in regridded:
        grid = photo_cells(photo, config.train_photo_cells)
        chosen = choose(photo, grid, config.train_cell_landmarks, 9)
        for i, cell in enumerate(grid):
            if i in chosen:
                landmarks[next_id] = cell
                next_id += 1
            else:
                material["train"].append(cell)
    return {"landmarks": landmarks, "material": {k: tuple(v) for k, v in material.items()}}


def split_landmark_ids(config: SyntheticConfig) -> dict[str, tuple[int, ...]]:
    """Landmark ids of test, val and train (without the training collages): the photo ids of
    :func:`split_landmarks`, or with ``photo_cells`` the ids of the landmark cells of those photos."""
    photos = split_landmarks(config)
    if not config.photo_cells:
        return photos
    cells = cell_layout(config)["landmarks"]
    ids = {split: tuple(i for i, c in cells.items() if c.photo in group) for split, group in photos.items()}
    if not ids["test"]:
        names = [LANDMARK_PHOTOS[p] for p in photos["test"]]
        raise ValueError(
            f"config: no cell of the test photos {names} has texture >= min_cell_texture="
            f"{config.min_cell_texture}; expected at least one test landmark (lower it or change the seed)"
        )
    return ids


@functools.lru_cache(maxsize=1024)
def cell_image(cell: Cell, config: SyntheticConfig) -> np.ndarray:
    """A cell cut from its photo as uint8 (H, W, 3), long side ``config.canonical_size``."""
    name = LANDMARK_PHOTOS[cell.photo]
    h0, w0 = load_photo(name, _CELL_TEXTURE_SIDE).shape[:2]
    rows, cols = photo_grid(h0, w0, config.photo_cells)
    # cut from the photo at the resolution where one cell is about canonical_size pixels across
    photo = load_photo(name, config.canonical_size * max(rows, cols))
    h, w = photo.shape[:2]
    x0, y0, x1, y1 = cell.box
    crop = np.ascontiguousarray(photo[round(y0 * h) : round(y1 * h), round(x0 * w) : round(x1 * w)])
    out = resize_long_side(crop, config.canonical_size, resample="bilinear")
    out.setflags(write=False)
    return out


def material_images(split: str, config: SyntheticConfig) -> tuple[np.ndarray, ...]:
    """The material cells of a split as uint8 images (empty without ``photo_cells``)."""
    if not config.photo_cells:
        return ()
    return tuple(cell_image(cell, config) for cell in cell_layout(config)["material"][split])


def landmark_split(landmark: int, config: SyntheticConfig) -> str:
    """The split ("test", "val" or "train") a landmark id belongs to; collages are training landmarks."""
    if landmark in collage_landmark_ids(config):
        return "train"
    for split, ids in split_landmark_ids(config).items():
        if landmark in ids:
            return split
    raise ValueError(f"landmark: {landmark} is not a landmark of this config")


def collage_landmark_ids(config: SyntheticConfig) -> tuple[int, ...]:
    """Landmark ids of the training collages: they follow the photo ids (len(LANDMARK_PHOTOS) + k)."""
    first = len(LANDMARK_PHOTOS)
    return tuple(range(first, first + config.num_collage_landmarks))

