"""Settings of the ``synthetic_landmarks`` demo dataset: :class:`SyntheticConfig` (sizes, counts, difficulty
thresholds, view style) and :data:`NAMED_CONFIGS`, the configs the TFDS builder ships with the builder
version that last changed each.

The landmark photos and textures are named here (:data:`LANDMARK_PHOTOS`, :data:`BACKGROUND_PHOTOS`); the
difficulty labels ``easy`` / ``hard`` / ``junk`` follow the revisited Oxford protocol (see the package doc).
"""

from __future__ import annotations

import dataclasses

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
    # photo_cells > 0 cuts every landmark photo into a grid of about that many cells (photos.photo_grid).
    # In each photo, cell_landmarks cells (chosen by seed among the cells whose texture, the mean gradient
    # magnitude of the grey photo at 384 px, is >= min_cell_texture) are landmarks; the other cells are
    # the split's material. num_test_landmarks and num_val_landmarks then count photos, not landmarks.
    photo_cells: int = 0
    cell_landmarks: int = 4
    min_cell_texture: float = 2.0
    views: str = "standard"  # "standard" (version 1.1.0) or "strong" (see draw.VIEW_PARAMS_STRONG)
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
