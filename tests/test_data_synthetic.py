"""Tests for the synthetic_landmarks generator (remap_jax.data.synthetic)."""

import dataclasses

import numpy as np
import pytest

from remap_jax.data import synthetic as S

TINY = S.SyntheticConfig(
    image_size=64,
    canonical_size=96,
    num_test_landmarks=2,
    num_val_landmarks=1,
    train_views_per_landmark=3,
    val_views_per_landmark=2,
    queries_per_landmark=2,
    index_views_per_landmark=6,
    num_distractors=5,
    num_collage_landmarks=3,
    collage_views_per_landmark=2,
)


@pytest.fixture(scope="module")
def tiny():
    return S.generate(TINY)


def test_all_photos_load_offline_and_are_distinct():
    photos = [S.load_photo(n, 48) for n in S.LANDMARK_PHOTOS + S.BACKGROUND_PHOTOS]
    for p in photos:
        assert p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 and max(p.shape[:2]) == 48
    small = {S.load_photo(n, 16).tobytes() for n in S.LANDMARK_PHOTOS}
    assert len(small) == len(S.LANDMARK_PHOTOS)


def test_landmark_splits_are_disjoint_and_seeded():
    lms = S.split_landmarks(TINY)
    test, val, train = set(lms["test"]), set(lms["val"]), set(lms["train"])
    assert not (test & val or test & train or val & train)
    assert len(test) == 2 and len(val) == 1 and len(test | val | train) == len(S.LANDMARK_PHOTOS)
    other = S.split_landmarks(dataclasses.replace(TINY, seed=1))
    assert other != lms


def test_deterministic_by_seed(tiny):
    again = S.generate(TINY)
    for a, b in zip(tiny["index"], again["index"], strict=True):
        np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(tiny["train"]["pidx"], again["train"]["pidx"])
    changed = S.generate(dataclasses.replace(TINY, seed=7))
    assert not np.array_equal(changed["query"][0].image, tiny["query"][0].image)


def test_split_contents_and_shapes(tiny):
    lms = tiny["landmarks"]
    train = tiny["train"]["views"]
    assert len(train) == 3 * len(lms["train"]) + 3 * 2
    assert {v.landmark for v in train} == set(lms["train"]) | set(S.collage_landmark_ids(TINY))
    assert {v.landmark for v in tiny["val"]["views"]} == set(lms["val"])
    assert len(tiny["query"]) == 4 and {v.landmark for v in tiny["query"]} == set(lms["test"])
    assert len(tiny["index"]) == 2 * 6 + 5
    assert {v.landmark for v in tiny["index"]} == set(lms["test"]) | {-1}
    for v in train + tiny["index"] + tiny["query"]:
        assert v.image.dtype == np.uint8 and max(v.image.shape[:2]) == 64 and v.image.shape[2] == 3
    assert all(v.difficulty != S.JUNK for v in train)  # training views never target junk


def test_ground_truth_matches_index_views(tiny):
    index = tiny["index"]
    for q, g in zip(tiny["query"], tiny["gnd"], strict=True):
        labelled = np.concatenate([g["easy"], g["hard"], g["junk"]])
        same = [i for i, v in enumerate(index) if v.landmark == q.landmark]
        assert sorted(labelled.tolist()) == same  # every view of the landmark is labelled exactly once
        for i in g["easy"]:
            assert index[i].visibility >= TINY.easy_visibility
        for i in g["junk"]:
            assert index[i].visibility < TINY.junk_visibility
        for i in g["hard"]:
            assert index[i].visibility >= TINY.junk_visibility
        x0, y0, x1, y1 = g["bbx"]
        assert 0 <= x0 < x1 <= q.image.shape[1] and 0 <= y0 < y1 <= q.image.shape[0]


def test_positive_pairs_are_same_landmark_and_usable(tiny):
    views = tiny["train"]["views"]
    qidx, pidx = tiny["train"]["qidx"], tiny["train"]["pidx"]
    assert qidx.size > 0 and qidx.shape == pidx.shape
    for q, p in zip(qidx, pidx, strict=True):
        assert q != p and views[q].landmark == views[p].landmark
        assert views[q].difficulty != S.JUNK and views[p].difficulty != S.JUNK


def test_positive_pairs_function():
    labels = np.array([0, 0, 1, 1, 1, 2])
    usable = np.array([True, True, True, False, True, True])
    q, p = S.positive_pairs(labels, usable, seed=0)
    np.testing.assert_array_equal(q, [0, 1, 2, 4])
    np.testing.assert_array_equal(p, [1, 0, 4, 2])


def test_difficulty_follows_visibility():
    rng = np.random.default_rng(0)
    easy = [S.render_view(rng, 0, S.EASY, TINY) for _ in range(6)]
    junk = [S.render_view(rng, 0, S.JUNK, TINY) for _ in range(6)]
    assert np.mean([v.visibility for v in easy]) > np.mean([v.visibility for v in junk])
    for v in easy + junk:
        expected_junk = v.visibility < TINY.junk_visibility
        assert (v.difficulty == S.JUNK) == expected_junk


def test_collages_use_only_training_photos_and_are_distinct(monkeypatch):
    cfg = dataclasses.replace(TINY, num_collage_landmarks=6)
    S.landmark_image.cache_clear()
    requested = []
    real = S.load_photo

    def spy(name, long_side):
        requested.append(name)
        return real(name, long_side)

    monkeypatch.setattr(S, "load_photo", spy)
    ids = S.collage_landmark_ids(cfg)
    assert ids == tuple(range(len(S.LANDMARK_PHOTOS), len(S.LANDMARK_PHOTOS) + 6))
    images = [S.landmark_image(i, cfg) for i in ids]
    S.landmark_image.cache_clear()
    allowed = {S.LANDMARK_PHOTOS[i] for i in S.split_landmarks(cfg)["train"]} | set(S.BACKGROUND_PHOTOS)
    assert requested and set(requested) <= allowed  # never a validation or test photo
    assert len({im.tobytes() for im in images}) == 6
    for im in images:
        assert im.dtype == np.uint8 and im.shape == (72, 96, 3) and not im.flags.writeable
    again = S.landmark_image(ids[0], cfg)
    np.testing.assert_array_equal(again, images[0])
    with pytest.raises(ValueError, match="landmark: expected a photo id"):
        S.landmark_image(ids[-1] + 1, cfg)


def test_config_validation():
    with pytest.raises(ValueError, match="num_test_landmarks"):
        S.SyntheticConfig(num_test_landmarks=0)
    with pytest.raises(ValueError, match="expected <= "):
        S.SyntheticConfig(num_test_landmarks=10, num_val_landmarks=6)
    with pytest.raises(ValueError, match="image_size"):
        S.SyntheticConfig(image_size=8)
    with pytest.raises(ValueError, match="junk_visibility"):
        S.SyntheticConfig(junk_visibility=0.6, easy_visibility=0.5)
    with pytest.raises(ValueError, match="name"):
        S.load_photo("not_a_photo", 32)
    with pytest.raises(ValueError, match="num_collage_landmarks"):
        S.SyntheticConfig(num_collage_landmarks=-1)
    with pytest.raises(ValueError, match="collage_views_per_landmark"):
        S.SyntheticConfig(collage_views_per_landmark=1)
