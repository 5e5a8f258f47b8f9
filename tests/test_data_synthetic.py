"""Tests for the synthetic_landmarks generator (remap_jax.data.synthetic)."""

import dataclasses
import hashlib

import numpy as np
import pytest
from PIL import Image

from remap_jax.data.labels import positive_pairs
from remap_jax.data.synthetic import photos as photos_module
from remap_jax.data.synthetic.config import (
    BACKGROUND_PHOTOS,
    EASY,
    HARD,
    JUNK,
    LANDMARK_PHOTOS,
    NAMED_CONFIGS,
    SyntheticConfig,
)
from remap_jax.data.synthetic.dataset import generate, generate_test, generate_training
from remap_jax.data.synthetic.photos import (
    cell_image,
    cell_layout,
    collage_landmark_ids,
    landmark_split,
    load_photo,
    photo_cells,
    photo_grid,
    split_landmark_ids,
    split_landmarks,
)
from remap_jax.data.synthetic.render import landmark_image, render_view

TINY = dataclasses.replace(NAMED_CONFIGS["tiny"], index_views_per_landmark=6, num_distractors=5)


@pytest.fixture(scope="module")
def tiny():
    return generate(TINY)


def test_all_photos_load_offline_and_are_distinct():
    photos = [load_photo(n, 48) for n in LANDMARK_PHOTOS + BACKGROUND_PHOTOS]
    for p in photos:
        assert p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 and max(p.shape[:2]) == 48
    small = {load_photo(n, 16).tobytes() for n in LANDMARK_PHOTOS}
    assert len(small) == len(LANDMARK_PHOTOS)


def test_landmark_splits_are_disjoint_and_seeded():
    lms = split_landmarks(TINY)
    test, val, train = set(lms["test"]), set(lms["val"]), set(lms["train"])
    assert not (test & val or test & train or val & train)
    assert len(test) == 2 and len(val) == 1 and len(test | val | train) == len(LANDMARK_PHOTOS)
    other = split_landmarks(dataclasses.replace(TINY, seed=1))
    assert other != lms


def test_deterministic_by_seed(tiny):
    again = generate(TINY)
    for a, b in zip(tiny["index"], again["index"], strict=True):
        np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(tiny["train"]["pidx"], again["train"]["pidx"])
    changed = generate(dataclasses.replace(TINY, seed=7))
    assert not np.array_equal(changed["query"][0].image, tiny["query"][0].image)


def test_split_contents_and_shapes(tiny):
    lms = tiny["landmarks"]
    train = tiny["train"]["views"]
    assert len(train) == 3 * len(lms["train"]) + 3 * 2
    assert {v.landmark for v in train} == set(lms["train"]) | set(collage_landmark_ids(TINY))
    assert {v.landmark for v in tiny["val"]["views"]} == set(lms["val"])
    assert len(tiny["query"]) == 4 and {v.landmark for v in tiny["query"]} == set(lms["test"])
    assert len(tiny["index"]) == 2 * 6 + 5
    assert {v.landmark for v in tiny["index"]} == set(lms["test"]) | {-1}
    for v in train + tiny["index"] + tiny["query"]:
        assert v.image.dtype == np.uint8 and max(v.image.shape[:2]) == 64 and v.image.shape[2] == 3
    assert all(v.difficulty != JUNK for v in train)  # training views never target junk


def _check_ground_truth(data, config):
    index = data["index"]
    for q, g in zip(data["query"], data["gnd"], strict=True):
        labelled = np.concatenate([g["easy"], g["hard"], g["junk"]])
        same = [i for i, v in enumerate(index) if v.landmark == q.landmark]
        assert sorted(labelled.tolist()) == same  # every view of the landmark is labelled exactly once
        for i in g["easy"]:
            assert index[i].visibility >= config.easy_visibility
        for i in g["junk"]:
            assert index[i].visibility < config.junk_visibility
        for i in g["hard"]:
            assert index[i].visibility >= config.junk_visibility
        x0, y0, x1, y1 = g["bbx"]
        assert 0 <= x0 < x1 <= q.image.shape[1] and 0 <= y0 < y1 <= q.image.shape[0]


def test_ground_truth_matches_index_views(tiny):
    _check_ground_truth(tiny, TINY)


def test_tiny_views_are_those_of_version_1_1_0():
    # Digest of what version 1.1.0's generator gave for the builder's tiny config: labels, visibilities,
    # difficulties, boxes, shapes, pairs and ground truth (pixels are left out: they may differ in the last
    # bit between scikit-image / scipy builds). The 1.2.0 additions must leave every 1.1.0 draw in place.
    tiny = generate(NAMED_CONFIGS["tiny"])
    h = hashlib.sha256()
    for part in (tiny["train"]["views"], tiny["val"]["views"], tiny["index"], tiny["query"]):
        for v in part:
            bbox = tuple(round(b, 3) for b in v.bbox)
            h.update(repr((v.landmark, round(v.visibility, 6), v.difficulty, bbox, v.image.shape)).encode())
    for split in ("train", "val"):
        h.update(repr((tiny[split]["qidx"].tolist(), tiny[split]["pidx"].tolist())).encode())
    for g in tiny["gnd"]:
        h.update(repr([np.asarray(g[k]).tolist() for k in ("easy", "hard", "junk")]).encode())
    assert h.hexdigest()[:16] == "0f3d50263e2bc110"


def test_positive_pairs_are_same_landmark_and_usable(tiny):
    views = tiny["train"]["views"]
    qidx, pidx = tiny["train"]["qidx"], tiny["train"]["pidx"]
    assert qidx.size > 0 and qidx.shape == pidx.shape
    for q, p in zip(qidx, pidx, strict=True):
        assert q != p and views[q].landmark == views[p].landmark
        assert views[q].difficulty != JUNK and views[p].difficulty != JUNK


def test_positive_pairs_function():
    labels = np.array([0, 0, 1, 1, 1, 2])
    usable = np.array([True, True, True, False, True, True])
    q, p = positive_pairs(labels, usable, seed=0)
    np.testing.assert_array_equal(q, [0, 1, 2, 4])
    np.testing.assert_array_equal(p, [1, 0, 4, 2])


def test_difficulty_follows_visibility():
    rng = np.random.default_rng(0)
    easy = [render_view(rng, 0, EASY, TINY) for _ in range(6)]
    junk = [render_view(rng, 0, JUNK, TINY) for _ in range(6)]
    assert np.mean([v.visibility for v in easy]) > np.mean([v.visibility for v in junk])
    for v in easy + junk:
        expected_junk = v.visibility < TINY.junk_visibility
        assert (v.difficulty == JUNK) == expected_junk


def test_collages_use_only_training_photos_and_are_distinct(monkeypatch):
    cfg = dataclasses.replace(TINY, num_collage_landmarks=6)
    requested = _spy_photos(monkeypatch)
    ids = collage_landmark_ids(cfg)
    assert ids == tuple(range(len(LANDMARK_PHOTOS), len(LANDMARK_PHOTOS) + 6))
    images = [landmark_image(i, cfg) for i in ids]
    landmark_image.cache_clear()
    allowed = {LANDMARK_PHOTOS[i] for i in split_landmarks(cfg)["train"]} | set(BACKGROUND_PHOTOS)
    assert requested and set(requested) <= allowed  # never a validation or test photo
    assert len({im.tobytes() for im in images}) == 6
    for im in images:
        assert im.dtype == np.uint8 and im.shape == (72, 96, 3) and not im.flags.writeable
    again = landmark_image(ids[0], cfg)
    np.testing.assert_array_equal(again, images[0])
    with pytest.raises(ValueError, match="landmark: expected a photo id"):
        landmark_image(ids[-1] + 1, cfg)


def test_config_validation():
    with pytest.raises(ValueError, match="num_test_landmarks"):
        SyntheticConfig(num_test_landmarks=0)
    with pytest.raises(ValueError, match="expected <= "):
        SyntheticConfig(num_test_landmarks=10, num_val_landmarks=6)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticConfig(image_size=8)
    with pytest.raises(ValueError, match="junk_visibility"):
        SyntheticConfig(junk_visibility=0.6, easy_visibility=0.5)
    with pytest.raises(ValueError, match="name"):
        load_photo("not_a_photo", 32)
    with pytest.raises(ValueError, match="num_collage_landmarks"):
        SyntheticConfig(num_collage_landmarks=-1)
    with pytest.raises(ValueError, match="collage_views_per_landmark"):
        SyntheticConfig(collage_views_per_landmark=1)


# --------------------------------------------------------------------------- the hard recipe (photo cells)

HARD_TINY = NAMED_CONFIGS["hard_tiny"]


@pytest.fixture(scope="module")
def hard_tiny():
    return generate(HARD_TINY)


def test_named_configs_are_the_documented_ones():
    assert NAMED_CONFIGS["default"] == SyntheticConfig()  # version 1.1.0
    default = dataclasses.asdict(SyntheticConfig())
    tiny = {k: v for k, v in dataclasses.asdict(NAMED_CONFIGS["tiny"]).items() if v != default[k]}
    assert tiny == dict(image_size=64, canonical_size=96, num_test_landmarks=2, num_val_landmarks=1,
                        train_views_per_landmark=3, val_views_per_landmark=2, queries_per_landmark=2,
                        index_views_per_landmark=4, num_distractors=4, num_collage_landmarks=3,
                        collage_views_per_landmark=2)
    hard = NAMED_CONFIGS["hard"]
    assert hard.photo_cells == 6 and hard.views == "strong" and hard.lookalike_distractors == 0.5
    small = NAMED_CONFIGS["hard_tiny"]
    assert (small.photo_cells, small.views, small.lookalike_distractors) == (6, "strong", 0.5)


def test_hard_config_sizes_fit_the_demo_budget():
    # Counts only (no rendering): the layout scores the photos' cells, nothing more.
    cfg = NAMED_CONFIGS["hard"]
    ids = split_landmark_ids(cfg)
    assert (len(ids["test"]), len(ids["val"]), len(ids["train"])) == (19, 8, 97)
    queries = cfg.queries_per_landmark * len(ids["test"])
    index = cfg.index_views_per_landmark * len(ids["test"]) + cfg.num_distractors
    train = cfg.train_views_per_landmark * len(ids["train"]) + cfg.num_collage_landmarks * 2
    assert (queries, index, train) == (76, 756, 1664)
    assert queries <= 100 and index <= 1000 and 1000 <= train <= 2000


def test_regridded_training_photos_leave_the_test_and_validation_splits_alone():
    # version 1.3.0 of the hard config cuts only the training photos finer; test / val ids (which seed
    # their views) and cells are those of 1.2.0
    cfg = NAMED_CONFIGS["hard"]
    old = dataclasses.replace(cfg, train_photo_cells=0, train_cell_landmarks=0, collage_views_per_landmark=4)
    new_layout, old_layout = cell_layout(cfg), cell_layout(old)
    new_ids, old_ids = split_landmark_ids(cfg), split_landmark_ids(old)
    for split in ("test", "val"):
        assert new_ids[split] == old_ids[split]
        assert [new_layout["landmarks"][i] for i in new_ids[split]] == [old_layout["landmarks"][i] for i in
                                                                         old_ids[split]]
        assert new_layout["material"][split] == old_layout["material"][split]
    assert min(new_ids["train"]) > max(old_layout["landmarks"])  # fresh ids after every 1.2.0 id
    photos = split_landmarks(cfg)["train"]
    for photo in photos:
        cells = [new_layout["landmarks"][i] for i in new_ids["train"]]
        mine = [c for c in cells if c.photo == photo]
        material = [c for c in new_layout["material"]["train"] if c.photo == photo]
        grid = photo_cells(photo, cfg.train_photo_cells)
        assert sorted(c.box for c in mine + material) == sorted(c.box for c in grid)
        assert {c for c in grid if c.texture >= cfg.min_cell_texture} == set(mine)  # every textured cell
    with pytest.raises(ValueError, match="train_photo_cells"):
        SyntheticConfig(train_photo_cells=16, train_cell_landmarks=16)  # needs photo_cells
    with pytest.raises(ValueError, match="train_photo_cells"):
        dataclasses.replace(cfg, train_cell_landmarks=0)


def test_photo_cells_tile_each_photo():
    for photo in range(len(LANDMARK_PHOTOS)):
        cells = photo_cells(photo, 6)
        h, w = load_photo(LANDMARK_PHOTOS[photo], 384).shape[:2]
        rows, cols = photo_grid(h, w, 6)
        assert len(cells) == rows * cols and 4 <= len(cells) <= 9
        area = sum((c.box[2] - c.box[0]) * (c.box[3] - c.box[1]) for c in cells)
        assert area == pytest.approx(1.0)  # the boxes of a regular grid: disjoint and covering
        assert {c.box[0] for c in cells} == {i / cols for i in range(cols)}
        assert all(c.photo == photo and c.texture >= 0 for c in cells)
    # a mostly blank photo has fewer textured cells than a busy one
    clock, coffee = LANDMARK_PHOTOS.index("clock"), LANDMARK_PHOTOS.index("coffee")
    textured = [sum(c.texture >= 2.0 for c in photo_cells(p, 6)) for p in (clock, coffee)]
    assert textured[0] < textured[1]


def test_cell_layout_partitions_the_cells_by_split():
    cfg = NAMED_CONFIGS["hard"]
    layout = cell_layout(cfg)
    photos = split_landmarks(cfg)
    ids = split_landmark_ids(cfg)
    first = len(LANDMARK_PHOTOS) + cfg.num_collage_landmarks
    assert min(layout["landmarks"]) == first  # ids follow the collages (regridded training photos leave gaps)
    assert not set(layout["landmarks"]) & set(collage_landmark_ids(cfg))
    for split in ("test", "val", "train"):
        for i in ids[split]:
            cell = layout["landmarks"][i]
            assert cell.photo in photos[split] and cell.texture >= cfg.min_cell_texture
            assert landmark_split(i, cfg) == split
        assert all(c.photo in photos[split] for c in layout["material"][split])
    for photo in range(len(LANDMARK_PHOTOS)):
        mine = [c for c in layout["landmarks"].values() if c.photo == photo]
        others = [c for split in layout["material"].values() for c in split if c.photo == photo]
        fine = photo in photos["train"]  # 1.3.0: training photos are cut into train_photo_cells cells
        assert len(mine) <= (cfg.train_cell_landmarks if fine else cfg.cell_landmarks)
        grid = photo_cells(photo, cfg.train_photo_cells if fine else cfg.photo_cells)
        assert sorted(c.box for c in mine + others) == sorted(c.box for c in grid)
    assert landmark_split(collage_landmark_ids(cfg)[0], cfg) == "train"
    with pytest.raises(ValueError, match="cell id"):
        landmark_image(0, cfg)  # with cells, a whole photo is no landmark


def test_cell_images_are_cut_from_their_photo():
    cfg = NAMED_CONFIGS["hard"]
    for cell in list(cell_layout(cfg)["landmarks"].values())[:3]:
        img = cell_image(cell, cfg)
        assert img.dtype == np.uint8 and max(img.shape[:2]) == cfg.canonical_size and not img.flags.writeable
        photo = load_photo(LANDMARK_PHOTOS[cell.photo], 384).astype(np.float32)
        h, w = photo.shape[:2]
        x0, y0, x1, y1 = cell.box
        crop = photo[round(y0 * h) : round(y1 * h), round(x0 * w) : round(x1 * w)]
        small = np.asarray(
            Image.fromarray(img).resize((crop.shape[1], crop.shape[0]), Image.Resampling.BILINEAR), np.float32
        )
        assert np.abs(small - crop).mean() < 6.0  # same content, up to resampling


def test_hard_split_contents_and_ground_truth(hard_tiny):
    lms = split_landmark_ids(HARD_TINY)
    assert hard_tiny["landmarks"] == lms
    train, index = hard_tiny["train"]["views"], hard_tiny["index"]
    assert len(train) == 2 * len(lms["train"]) + 3 * 2
    assert {v.landmark for v in train} == set(lms["train"]) | set(collage_landmark_ids(HARD_TINY))
    assert {v.landmark for v in hard_tiny["val"]["views"]} == set(lms["val"])
    assert len(hard_tiny["query"]) == len(lms["test"]) and len(index) == 3 * len(lms["test"]) + 4
    assert {v.landmark for v in index} == set(lms["test"]) | {-1}
    for v in train + index + hard_tiny["query"]:
        assert v.image.dtype == np.uint8 and max(v.image.shape[:2]) == 64 and v.image.shape[2] == 3
    _check_ground_truth(hard_tiny, HARD_TINY)
    views, qidx, pidx = train, hard_tiny["train"]["qidx"], hard_tiny["train"]["pidx"]
    assert qidx.size > 0
    for q, p in zip(qidx, pidx, strict=True):
        assert views[q].landmark == views[p].landmark
        assert JUNK not in (views[q].difficulty, views[p].difficulty)


def test_hard_deterministic_by_seed(hard_tiny):
    again = generate(HARD_TINY)
    for part in ("index", "query"):
        for a, b in zip(hard_tiny[part], again[part], strict=True):
            np.testing.assert_array_equal(a.image, b.image)
            assert (a.landmark, a.visibility, a.difficulty) == (b.landmark, b.visibility, b.difficulty)
    for a, b in zip(hard_tiny["train"]["views"], again["train"]["views"], strict=True):
        np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(hard_tiny["train"]["pidx"], again["train"]["pidx"])


def test_strong_views_are_harder_than_standard_ones():
    # Same landmark, same seeds: strong views see less of it on average and are hard more often.
    std = dataclasses.replace(HARD_TINY, views="standard", lookalike_distractors=0.0)
    lm = split_landmark_ids(HARD_TINY)["test"][0]
    vis = {}
    for cfg in (HARD_TINY, std):
        views = [render_view(np.random.default_rng([3, i]), lm, HARD, cfg) for i in range(12)]
        vis[cfg.views] = np.mean([v.visibility for v in views])
    assert vis["strong"] < vis["standard"]


def _spy_photos(monkeypatch):
    """Clears the image caches and records every photo name that load_photo is asked for from now on."""
    for cached in (landmark_image, cell_image, load_photo):
        cached.cache_clear()
    requested = []
    real = load_photo

    def spy(name, long_side):
        requested.append(name)
        return real(name, long_side)

    monkeypatch.setattr(photos_module, "load_photo", spy)
    return requested


def test_hard_training_split_holds_no_val_or_test_pixel(monkeypatch):
    cfg = dataclasses.replace(HARD_TINY, num_val_landmarks=0)  # so generate_training renders train only
    cell_layout(cfg)  # the layout scores every photo's cells; rendering starts from here
    requested = _spy_photos(monkeypatch)
    data = generate_training(cfg)
    train_photos = {LANDMARK_PHOTOS[i] for i in split_landmarks(cfg)["train"]}
    assert not data["val"]["views"] and len(data["train"]["views"]) > 0
    # every training photo with a landmark cell is read, and nothing but training photos and textures
    cells = cell_layout(cfg)["landmarks"]
    cell_photos = {LANDMARK_PHOTOS[cells[i].photo] for i in split_landmark_ids(cfg)["train"]}
    assert cell_photos <= set(requested) <= train_photos | set(BACKGROUND_PHOTOS)


def test_hard_test_split_reads_only_test_photos_and_textures(monkeypatch):
    cell_layout(HARD_TINY)
    requested = _spy_photos(monkeypatch)
    data = generate_test(dataclasses.replace(HARD_TINY, lookalike_distractors=1.0))
    photos = split_landmarks(HARD_TINY)
    allowed = {LANDMARK_PHOTOS[i] for i in photos["test"]} | set(BACKGROUND_PHOTOS)
    assert requested and set(requested) <= allowed
    distractors = [v for v in data["index"] if v.landmark < 0]
    assert len(distractors) == 4 and all(v.difficulty == "" and v.visibility == 0.0 for v in distractors)
    assert all(v.image.std() > 1.0 for v in distractors)  # views of material cells, not blank frames


def test_hard_config_validation():
    with pytest.raises(ValueError, match="cell_landmarks"):
        SyntheticConfig(photo_cells=4, cell_landmarks=5)
    with pytest.raises(ValueError, match="photo_cells"):
        SyntheticConfig(photo_cells=-1)
    with pytest.raises(ValueError, match="views: expected one of"):
        SyntheticConfig(views="extreme")
    with pytest.raises(ValueError, match="lookalike_distractors"):
        SyntheticConfig(lookalike_distractors=0.5)  # needs photo cells
    with pytest.raises(ValueError, match="lookalike_distractors"):
        SyntheticConfig(photo_cells=6, lookalike_distractors=1.5)
    with pytest.raises(ValueError, match="no cell of the test photos"):
        split_landmark_ids(dataclasses.replace(HARD_TINY, min_cell_texture=1e9))
    with pytest.raises(ValueError, match="photo_cells: expected > 0"):
        cell_layout(TINY)
