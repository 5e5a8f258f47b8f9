"""The ``synthetic_landmarks`` demo dataset: real photographs bundled with scikit-image are the "landmarks",
and every image is a synthetic view of one of them (random homography, crop, scale, rotation, photometric
change, occlusion) or a distractor.

The training split also holds *collage* landmarks: canonical views composed of patches cut from the
training photos (and the textures), viewed the same way. Nine photos are too few landmarks to learn
anything that carries over to unseen ones; collages add as many training landmarks as wanted without
touching a validation or test photo.

Pure numpy generation, deterministic by seed, offline (only the photos that ship inside the scikit-image
wheel are used). The TFDS builder in :mod:`remap_jax.data.builders` stores what :func:`generate` returns.

Ground truth follows the revisited Oxford form: the difficulty of an index image for a query of the same
landmark comes from the *visibility* of the landmark's canonical view in it (the fraction of canonical-view
points that land inside the image and are not occluded): ``easy`` >= ``easy_visibility``, ``junk`` <
``junk_visibility``, ``hard`` in between (strong rotation or heavy photometric change also makes an
otherwise easy view hard). Train, validation and test landmarks are disjoint.

The ``hard`` config (:data:`NAMED_CONFIGS`) cuts every photo into a grid of *cells*; a few textured cells
per photo are landmarks, the other cells are *material* for that split only (backgrounds, occluders,
look-alike distractors, and the training collages), so that no two landmarks share a pixel and no
validation or test pixel reaches the training split. Its views are rendered with the ``strong`` style:
wider scale / viewpoint / rotation ranges, more occluders, backgrounds cut from the material. Cells of one
photo look alike (same colours, texture, subject), which a pretrained network does not separate by itself.
Since builder version 1.3.0 its training photos are cut into a finer grid (``train_photo_cells``) whose
textured cells are all landmarks: about 100 sibling training landmarks, so that mining finds negatives as
hard as the test split's (the test and validation splits are the same records as in 1.2.0).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from remap_jax.data.images import load_rgb, resize_long_side
from remap_jax.runtime.extras import require

# Photos bundled in the scikit-image wheel (no pooch download), one landmark each. "cat" is the same picture
# as "chelsea" and is left out; "motorcycle" is the left image of `stereo_motorcycle`.
LANDMARK_PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "moon",
    "retina",
    "rocket",
    "motorcycle",
    "page",
    "text",
    "cell",
)
# Textures and silhouettes: backgrounds behind the landmarks, occluders, and distractor images.
BACKGROUND_PHOTOS = ("brick", "grass", "gravel", "checkerboard", "horse")

EASY, HARD, JUNK = "easy", "hard", "junk"
VIEW_STYLES = ("standard", "strong")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Size and composition of the demo dataset. All counts are per landmark unless named otherwise."""

    seed: int = 0
    image_size: int = 192  # long side of every stored image, pixels
    canonical_size: int = 256  # long side the landmark photos are resized to before warping
    num_test_landmarks: int = 6
    num_val_landmarks: int = 2
    train_views_per_landmark: int = 40
    val_views_per_landmark: int = 20
    queries_per_landmark: int = 5
    index_views_per_landmark: int = 30
    num_distractors: int = 120
    # Extra training-only landmarks: collages of patches cut from the *training* photos and the textures
    # (never from validation or test photos). Nine photos are too few landmarks to learn anything that
    # carries over to unseen ones; collages give as many distinct landmarks as wanted.
    num_collage_landmarks: int = 200
    collage_views_per_landmark: int = 4
    easy_visibility: float = 0.5
    junk_visibility: float = 0.15
    jpeg_quality: int = 90
    # Added with the hard config (builder version 1.2.0); the defaults reproduce version 1.1.0 exactly.
    # photo_cells > 0 cuts every landmark photo into a grid of about that many cells (:func:`photo_grid`).
    # In each photo, cell_landmarks cells (chosen by seed among the cells whose texture, the mean gradient
    # magnitude of the grey photo at 384 px, is >= min_cell_texture) are landmarks; the other cells are
    # the split's material. num_test_landmarks and num_val_landmarks then count photos, not landmarks.
    photo_cells: int = 0
    cell_landmarks: int = 4
    min_cell_texture: float = 2.0
    views: str = "standard"  # "standard" (version 1.1.0) or "strong" (see _VIEW_PARAMS_STRONG)
    # Fraction of the distractors that are views (rendered like index views) of the test photos' material
    # cells instead of texture clutter; needs photo_cells > 0.
    lookalike_distractors: float = 0.0
    # Added with builder version 1.3.0. train_photo_cells > 0 cuts the *training* photos into a finer grid of
    # about that many cells, of which up to train_cell_landmarks (by texture, as above) are landmarks: many
    # sibling landmarks, whose views are each other's hardest negatives, as the test split's look-alikes
    # are. Their ids follow every other id, so the test and validation splits are unchanged.
    train_photo_cells: int = 0
    train_cell_landmarks: int = 0

    def __post_init__(self):
        n = len(LANDMARK_PHOTOS)
        if self.num_test_landmarks < 1 or self.num_val_landmarks < 0:
            raise ValueError(
                f"num_test_landmarks, num_val_landmarks: expected >= 1 and >= 0, got "
                f"{self.num_test_landmarks}, {self.num_val_landmarks}"
            )
        if self.num_test_landmarks + self.num_val_landmarks > n - 2:
            raise ValueError(
                f"num_test_landmarks + num_val_landmarks: expected <= {n - 2} (there are {n} landmark photos "
                f"and training needs at least 2), got {self.num_test_landmarks + self.num_val_landmarks}"
            )
        if self.image_size < 32 or self.canonical_size < 32:
            raise ValueError(
                "image_size, canonical_size: expected >= 32 pixels, got "
                f"{self.image_size}, {self.canonical_size}"
            )
        if self.num_collage_landmarks < 0 or self.collage_views_per_landmark < 2:
            raise ValueError(
                "num_collage_landmarks, collage_views_per_landmark: expected >= 0 and >= 2, got "
                f"{self.num_collage_landmarks}, {self.collage_views_per_landmark}"
            )
        for field in ("train_views_per_landmark", "queries_per_landmark", "index_views_per_landmark"):
            if getattr(self, field) < 2 and field != "queries_per_landmark":
                raise ValueError(f"{field}: expected >= 2, got {getattr(self, field)}")
        if self.queries_per_landmark < 1:
            raise ValueError(f"queries_per_landmark: expected >= 1, got {self.queries_per_landmark}")
        if not 0.0 < self.junk_visibility < self.easy_visibility <= 1.0:
            raise ValueError(
                "junk_visibility, easy_visibility: expected 0 < junk < easy <= 1, got "
                f"{self.junk_visibility}, {self.easy_visibility}"
            )
        if self.photo_cells < 0 or (self.photo_cells and not 1 <= self.cell_landmarks <= self.photo_cells):
            raise ValueError(
                "photo_cells, cell_landmarks: expected photo_cells >= 0 and, with cells, "
                f"1 <= cell_landmarks <= photo_cells, got {self.photo_cells}, {self.cell_landmarks}"
            )
        fine_ok = self.photo_cells and 1 <= self.train_cell_landmarks <= self.train_photo_cells
        if self.train_photo_cells < 0 or (self.train_photo_cells and not fine_ok):
            raise ValueError(
                "train_photo_cells, train_cell_landmarks: expected train_photo_cells >= 0 and, when > 0, "
                "photo_cells > 0 and 1 <= train_cell_landmarks <= train_photo_cells, got "
                f"{self.train_photo_cells}, {self.train_cell_landmarks} with photo_cells={self.photo_cells}"
            )
        if self.views not in VIEW_STYLES:
            raise ValueError(f"views: expected one of {VIEW_STYLES}, got {self.views!r}")
        lookalike = self.lookalike_distractors
        if not 0.0 <= lookalike <= 1.0 or (lookalike and not self.photo_cells):
            raise ValueError(
                "lookalike_distractors: expected a fraction in [0, 1], and 0 unless photo_cells > 0 "
                f"(look-alike distractors are views of the test photos' material cells), got {lookalike} "
                f"with photo_cells={self.photo_cells}"
            )


# ----------------------------------------------------------------------------------------------- photos


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


# ------------------------------------------------------------------------------------------------ views

# Sampling ranges per target difficulty: magnification (1 = the canonical view fits the frame), centre
# offset as a fraction of the canonical size, rotation (degrees), perspective strength, occluders.
_VIEW_PARAMS = {
    "query": dict(mag=(0.55, 0.8), offset=0.08, rot=5.0, persp=0.1, occluders=0, photometric=0.3),
    EASY: dict(mag=(0.7, 1.5), offset=0.2, rot=12.0, persp=0.25, occluders=1, photometric=0.6),
    HARD: dict(mag=(1.6, 2.6), offset=0.45, rot=35.0, persp=0.5, occluders=3, photometric=1.0),
    JUNK: dict(mag=(2.5, 4.0), offset=0.9, rot=50.0, persp=0.5, occluders=3, photometric=1.0),
}
# views="strong": queries as above; the index views zoom out further (landmark small in clutter) and in
# further, turn and tilt more and are occluded more often.
_VIEW_PARAMS_STRONG = {
    "query": _VIEW_PARAMS["query"],
    EASY: dict(mag=(0.45, 1.6), offset=0.3, rot=20.0, persp=0.35, occluders=2, photometric=0.8),
    HARD: dict(mag=(1.6, 3.0), offset=0.5, rot=45.0, persp=0.6, occluders=4, photometric=1.0),
    JUNK: dict(mag=(2.8, 4.5), offset=0.9, rot=60.0, persp=0.6, occluders=4, photometric=1.0),
}


def _view_shape(rng: np.random.Generator, long_side: int) -> tuple[int, int]:
    short = int(round(long_side * 0.75))
    return (short, long_side) if rng.random() < 0.75 else (long_side, short)


def _homography(rng, src_shape, out_shape, params) -> tuple[np.ndarray, float]:
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


def _apply(h: np.ndarray, xy: np.ndarray) -> np.ndarray:
    pts = np.concatenate([xy, np.ones((xy.shape[0], 1))], axis=1) @ h.T
    w = pts[:, 2:3]
    w = np.where(np.abs(w) < 1e-9, 1e-9, w)
    return pts[:, :2] / w


def _warp(src: np.ndarray, h: np.ndarray, out_shape) -> tuple[np.ndarray, np.ndarray]:
    """Warps a uint8 image by the homography; returns float image in [0, 1] and the coverage mask."""
    from skimage.transform import ProjectiveTransform, warp

    inverse = ProjectiveTransform(matrix=np.linalg.inv(h))
    rgba = np.concatenate([src.astype(np.float32) / 255.0, np.ones(src.shape[:2] + (1,), np.float32)], -1)
    out = warp(rgba, inverse, output_shape=out_shape, order=1, mode="constant", cval=0.0)
    return out[..., :3], out[..., 3]


def _warp_fast(src: np.ndarray, h: np.ndarray, out_shape) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_warp` through PIL's perspective transform (several times faster; views="strong" only)."""
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


def _clutter(rng, out_shape, pool: tuple[np.ndarray, ...]) -> np.ndarray:
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


def clutter_pool(split: str, config: SyntheticConfig) -> tuple[np.ndarray, ...]:
    """What views="strong" backgrounds and occluders are cut from: the split's material cells and the
    textures (never a landmark cell, never a pixel of another split's photos)."""
    textures = tuple(load_photo(name, config.canonical_size) for name in BACKGROUND_PHOTOS)
    return material_images(split, config) + textures


def _background(rng, out_shape, canonical_size) -> np.ndarray:
    """A random crop of a texture photo, or a smooth colour gradient, as float (H, W, 3) in [0, 1]."""
    ho, wo = out_shape
    if rng.random() < 0.7:
        tex = load_photo(BACKGROUND_PHOTOS[rng.integers(len(BACKGROUND_PHOTOS))], canonical_size)
        y = rng.integers(0, max(1, tex.shape[0] - ho // 2))
        x = rng.integers(0, max(1, tex.shape[1] - wo // 2))
        crop = tex[y : y + ho // 2, x : x + wo // 2]
        from skimage.transform import resize

        img = resize(crop.astype(np.float32) / 255.0, (ho, wo), order=1, anti_aliasing=False)
        return img * rng.uniform(0.4, 1.0, 3)  # tinted
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    t = np.linspace(0, 1, wo)[None, :, None] * np.ones((ho, 1, 1))
    return c0 * (1 - t) + c1 * t


def _occlude(rng, img, max_count, fill_image) -> np.ndarray:
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


def _photometric(rng, img, strength) -> tuple[np.ndarray, bool]:
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


def _visibility(h, src_shape, out_shape, occluded: np.ndarray) -> float:
    """Fraction of a 24x24 grid over the canonical view that lands inside the frame and is not occluded."""
    hc, wc = src_shape
    ho, wo = out_shape
    gy, gx = np.meshgrid((np.arange(24) + 0.5) * hc / 24, (np.arange(24) + 0.5) * wc / 24, indexing="ij")
    pts = _apply(h, np.stack([gx.ravel(), gy.ravel()], axis=1))
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < wo) & (pts[:, 1] >= 0) & (pts[:, 1] < ho)
    xi = np.clip(pts[:, 0].astype(int), 0, wo - 1)
    yi = np.clip(pts[:, 1].astype(int), 0, ho - 1)
    visible = inside & ~occluded[yi, xi]
    return float(visible.mean())


@dataclasses.dataclass
class View:
    """One generated image and what is known about it."""

    image: np.ndarray  # uint8 (H, W, 3)
    landmark: int  # a photo id (LANDMARK_PHOTOS), collage id (train only) or cell id; -1 for distractors
    visibility: float  # fraction of the canonical view visible, 0 for distractors
    difficulty: str  # easy / hard / junk ("" for distractors)
    bbox: tuple[float, float, float, float]  # (x0, y0, x1, y1) of the landmark in the image


def collage_landmark_ids(config: SyntheticConfig) -> tuple[int, ...]:
    """Landmark ids of the training collages: they follow the photo ids (len(LANDMARK_PHOTOS) + k)."""
    first = len(LANDMARK_PHOTOS)
    return tuple(range(first, first + config.num_collage_landmarks))


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
        return load_photo(LANDMARK_PHOTOS[landmark], config.canonical_size)
    elif landmark not in collages:
        raise ValueError(
            f"landmark: expected a photo id in [0, {len(LANDMARK_PHOTOS)}) or a collage id in "
            f"{collages[:1]}..{collages[-1:]}, got {landmark}"
        )
    rng = np.random.default_rng([config.seed, 7, landmark])
    shape = (int(round(config.canonical_size * 0.75)), config.canonical_size)
    if config.photo_cells:
        # patches of the training photos' material cells only: a collage never shares pixels with a cell
        textures = tuple(load_photo(name, config.canonical_size) for name in BACKGROUND_PHOTOS)
        material = material_images("train", config) or textures
        canvas = np.array(_clutter(rng, shape, textures), np.float32)
        for _ in range(rng.integers(4, 8)):
            pool = material if rng.random() < 0.8 else textures
            _paste_patch(rng, canvas, pool[rng.integers(len(pool))])
    else:
        canvas = np.array(_background(rng, shape, config.canonical_size), np.float32)
        photos = [LANDMARK_PHOTOS[i] for i in split_landmarks(config)["train"]]
        for _ in range(rng.integers(4, 8)):
            pool = photos if rng.random() < 0.8 else BACKGROUND_PHOTOS
            _paste_patch(rng, canvas, load_photo(pool[rng.integers(len(pool))], config.canonical_size))
    out = np.round(np.clip(canvas, 0, 1) * 255.0).astype(np.uint8)
    out.setflags(write=False)
    return out


def _render(rng, src: np.ndarray, kind: str, config: SyntheticConfig, pool: tuple[np.ndarray, ...]):
    """Warps ``src`` into a new frame over a background, occludes it and changes its photometry.

    Returns (float image (H, W, 3) in [0, 1], homography, |rotation| degrees, occlusion mask, whether the
    photometric change is strong). ``pool``: what views="strong" cuts backgrounds and occluders from."""
    strong_views = config.views == "strong"
    params = (_VIEW_PARAMS_STRONG if strong_views else _VIEW_PARAMS)[kind]
    out_shape = _view_shape(rng, config.image_size)
    h, rot = _homography(rng, src.shape[:2], out_shape, params)
    if strong_views:
        fg, cover = _warp_fast(src, h, out_shape)
        bg = _clutter(rng, out_shape, pool)

        def fill(r, shape):
            return _clutter(r, shape, pool)
    else:
        fg, cover = _warp(src, h, out_shape)
        bg = _background(rng, out_shape, config.canonical_size)

        def fill(r, shape):
            return _background(r, shape, config.canonical_size)

    img = fg + bg * (1.0 - cover[..., None])
    occluded = _occlude(rng, img, params["occluders"], fill)
    img, strong = _photometric(rng, img, params["photometric"])
    return img, h, rot, occluded, strong


def render_view(rng: np.random.Generator, landmark: int, kind: str, config: SyntheticConfig) -> View:
    """Renders a view of a landmark; kind is "query", "easy", "hard" or "junk" (the target difficulty; the
    stored difficulty is measured from the rendered view)."""
    src = landmark_image(landmark, config)
    pool = clutter_pool(landmark_split(landmark, config), config) if config.views == "strong" else ()
    img, h, rot, occluded, strong = _render(rng, src, kind, config, pool)
    out_shape = img.shape[:2]
    vis = _visibility(h, src.shape[:2], out_shape, occluded)
    if vis >= config.easy_visibility and rot <= 25.0 and not strong:
        difficulty = EASY
    elif vis >= config.junk_visibility:
        difficulty = HARD
    else:
        difficulty = JUNK
    hc, wc = src.shape[:2]
    corners = _apply(h, np.array([[0, 0], [wc, 0], [wc, hc], [0, hc]], dtype=np.float64))
    x0, y0 = np.clip(corners.min(axis=0), 0, [out_shape[1], out_shape[0]])
    x1, y1 = np.clip(corners.max(axis=0), 0, [out_shape[1], out_shape[0]])
    image = np.round(img * 255.0).astype(np.uint8)
    return View(image, landmark, vis, difficulty, (float(x0), float(y0), float(x1), float(y1)))


def render_distractor(rng: np.random.Generator, config: SyntheticConfig) -> View:
    """A view of no landmark: a warped texture / gradient with random shapes and photometric change, or
    (``lookalike_distractors``) a view of a material cell of the test photos, rendered like an easy or hard
    index view."""
    if config.views == "standard":
        out_shape = _view_shape(rng, config.image_size)
        img = _background(rng, out_shape, config.canonical_size)
        _occlude(rng, img, 4, lambda r, shape: _background(r, shape, config.canonical_size))
        img, _ = _photometric(rng, img, 1.0)
    else:
        pool = clutter_pool("test", config)
        material = material_images("test", config)
        if material and config.lookalike_distractors and rng.random() < config.lookalike_distractors:
            src = material[rng.integers(len(material))]
            img, *_ = _render(rng, src, EASY if rng.random() < 0.5 else HARD, config, pool)
        else:
            out_shape = _view_shape(rng, config.image_size)
            img = _clutter(rng, out_shape, pool)
            _occlude(rng, img, 4, lambda r, shape: _clutter(r, shape, pool))
            img, _ = _photometric(rng, img, 1.0)
    return View(np.round(img * 255.0).astype(np.uint8), -1, 0.0, "", (0.0, 0.0, 0.0, 0.0))


def _target_kinds(rng, n: int, junk: bool) -> list[str]:
    weights = np.array([0.45, 0.35, 0.2]) if junk else np.array([0.55, 0.45, 0.0])
    counts = np.floor(weights * n).astype(int)
    counts[0] += n - counts.sum()
    kinds = [EASY] * counts[0] + [HARD] * counts[1] + [JUNK] * counts[2]
    return [kinds[i] for i in rng.permutation(n)]


def _views_for(config, split_code: int, landmarks, per_landmark: int, junk: bool) -> list[View]:
    views = []
    for lm in landmarks:
        kinds = _target_kinds(np.random.default_rng([config.seed, split_code, lm]), per_landmark, junk)
        for i, kind in enumerate(kinds):
            rng = np.random.default_rng([config.seed, split_code, lm, i + 1])
            views.append(render_view(rng, lm, kind, config))
    return views


def positive_pairs(labels: np.ndarray, usable: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Query/positive pairs like SfM-120k: every usable image is a query once, paired with a random other
    usable image of the same landmark. Returns (qidx, pidx) int64 arrays."""
    rng = np.random.default_rng(seed)
    qidx, pidx = [], []
    for lm in np.unique(labels):
        members = np.flatnonzero((labels == lm) & usable)
        if members.size < 2:
            continue
        for q in members:
            others = members[members != q]
            qidx.append(q)
            pidx.append(others[rng.integers(others.size)])
    return np.asarray(qidx, np.int64), np.asarray(pidx, np.int64)


def generate_training(config: SyntheticConfig = SyntheticConfig()) -> dict:
    """The ``train`` and ``val`` splits: ``{"train": TrainSplit, "val": TrainSplit}``, a TrainSplit being
    ``{"views": [View], "qidx": (P,), "pidx": (P,)}`` (see :func:`positive_pairs`)."""
    lms = split_landmark_ids(config)
    out = {}
    for code, split in ((1, "train"), (2, "val")):
        per = config.train_views_per_landmark if split == "train" else config.val_views_per_landmark
        views = _views_for(config, code, lms[split], per, junk=False) if lms[split] and per else []
        if split == "train" and config.num_collage_landmarks:
            views += _views_for(
                config, code, collage_landmark_ids(config), config.collage_views_per_landmark, junk=False
            )
        labels = np.array([v.landmark for v in views], np.int64)
        usable = np.array([v.difficulty != JUNK for v in views], bool)
        qidx, pidx = positive_pairs(labels, usable, seed=config.seed * 1000 + code)
        out[split] = {"views": views, "qidx": qidx, "pidx": pidx}
    return out


def generate_test(config: SyntheticConfig = SyntheticConfig(), progress: bool = False) -> dict:
    """The test part: ``{"index": [View], "query": [View], "gnd": [dict], "landmarks": split_landmark_ids}``;
    ``gnd[q]`` has ``easy``, ``hard``, ``junk`` (index positions) and ``bbx`` (x0, y0, x1, y1) for query q.
    Every view has its own seed, so this equals the test part of :func:`generate`."""
    lms = split_landmark_ids(config)
    index = _views_for(config, 3, lms["test"], config.index_views_per_landmark, junk=True)
    it = range(config.num_distractors)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="distractors")
    for i in it:
        index.append(render_distractor(np.random.default_rng([config.seed, 4, i]), config))
    order = np.random.default_rng([config.seed, 5]).permutation(len(index))
    index = [index[i] for i in order]

    queries, gnd = [], []
    index_labels = np.array([v.landmark for v in index])
    index_difficulty = np.array([v.difficulty for v in index])
    for lm in lms["test"]:
        for i in range(config.queries_per_landmark):
            view = render_view(np.random.default_rng([config.seed, 6, lm, i]), lm, "query", config)
            queries.append(view)
            same = index_labels == lm
            gnd.append(
                {
                    "easy": np.flatnonzero(same & (index_difficulty == EASY)),
                    "hard": np.flatnonzero(same & (index_difficulty == HARD)),
                    "junk": np.flatnonzero(same & (index_difficulty == JUNK)),
                    "bbx": np.asarray(view.bbox, np.float64),
                }
            )
    return {"index": index, "query": queries, "gnd": gnd, "landmarks": lms}


def generate(config: SyntheticConfig = SyntheticConfig(), progress: bool = False) -> dict:
    """Generates the whole dataset in memory: :func:`generate_training` and :func:`generate_test` together.

    Returns:
      ``{"train": TrainSplit, "val": TrainSplit, "index": [View], "query": [View], "gnd": [dict],
      "landmarks": {split: landmark ids}}`` where a TrainSplit is ``{"views": [View], "qidx": (P,),
      "pidx": (P,)}``; ``gnd[q]`` has ``easy``, ``hard``, ``junk`` (index positions) and ``bbx``
      (x0, y0, x1, y1) for query q.
    """
    return {**generate_training(config), **generate_test(config, progress=progress)}


#: The configs the TFDS builder ships (``synthetic_landmarks/<name>``), here so that scripts without TFDS
#: (tools/measure_synthetic_difficulty.py) can generate exactly what the builder stores.
NAMED_CONFIGS = {
    "default": SyntheticConfig(),
    "tiny": SyntheticConfig(
        image_size=64,
        canonical_size=96,
        num_test_landmarks=2,
        num_val_landmarks=1,
        train_views_per_landmark=3,
        val_views_per_landmark=2,
        queries_per_landmark=2,
        index_views_per_landmark=4,
        num_distractors=4,
        num_collage_landmarks=3,
        collage_views_per_landmark=2,
    ),
    "hard": SyntheticConfig(  # builder version 1.3.0 (1.2.0: train_photo_cells 0, collage views 4)
        photo_cells=6,
        cell_landmarks=4,
        views="strong",
        lookalike_distractors=0.5,
        train_views_per_landmark=12,
        val_views_per_landmark=10,
        queries_per_landmark=4,
        index_views_per_landmark=24,
        num_distractors=300,
        num_collage_landmarks=250,
        collage_views_per_landmark=2,
        train_photo_cells=16,
        train_cell_landmarks=16,
    ),
    "hard_tiny": SyntheticConfig(
        image_size=64,
        canonical_size=96,
        num_test_landmarks=2,
        num_val_landmarks=2,
        photo_cells=6,
        cell_landmarks=2,
        views="strong",
        lookalike_distractors=0.5,
        train_views_per_landmark=2,
        val_views_per_landmark=2,
        queries_per_landmark=1,
        index_views_per_landmark=3,
        num_distractors=4,
        num_collage_landmarks=3,
        collage_views_per_landmark=2,
    ),
}
