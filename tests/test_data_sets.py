"""Tests for load_training_set / load_test_set (array_record random access) and lazy image lists."""

import numpy as np
import pytest
from test_data_builders import write_fake_revisitop1m, write_fake_roxford

from remap_jax.data import load_test_set, load_training_set
from remap_jax.data.images import ImageList, decode_resized


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def train_set(data_dir):
    return load_training_set("synthetic_landmarks/tiny", data_dir=data_dir)


@pytest.fixture(scope="module")
def test_set(data_dir):
    return load_test_set("synthetic_landmarks/tiny", data_dir=data_dir)


def test_training_set_contract(train_set):
    assert train_set.num_images == len(train_set) == 14 * 3 + 3 * 2  # photo landmarks + tiny's 3 collages
    assert train_set.labels.shape == (48,) and train_set.labels.dtype == np.int64
    assert train_set.qidx.shape == train_set.pidx.shape and train_set.qidx.size > 0
    assert np.all(train_set.labels[train_set.qidx] == train_set.labels[train_set.pidx])
    img = train_set.read(5)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert train_set.val is not None and train_set.val.num_images == 2
    assert set(train_set.val.labels.tolist()).isdisjoint(train_set.labels.tolist())
    with pytest.raises(IndexError, match="out of range"):
        train_set.read(48)
    # what training decodes (draft decoding for large JPEGs): the stored bytes, the same pixels as `read`
    stored = train_set.read_stored(5)
    assert isinstance(stored, bytes)
    decoded = decode_resized(stored, [img.shape[:2]], exif_transpose=False)
    np.testing.assert_array_equal(decoded.images[0], img)


def test_test_set_contract(test_set):
    assert test_set.num_queries == 4 and test_set.num_index == 12
    q = test_set.read_query(0)
    full = test_set.read_query(0, crop=False)
    assert q.shape[0] <= full.shape[0] and q.shape[1] <= full.shape[1]
    assert test_set.read_index(11).shape[2] == 3
    g = test_set.gnd[0]
    assert set(g) >= {"easy", "hard", "junk", "bbx"} and g["bbx"].shape == (4,)
    for g in test_set.gnd:
        for key in ("easy", "hard", "junk"):
            assert np.all((g[key] >= 0) & (g[key] < test_set.num_index))
    with pytest.raises(IndexError):
        test_set.read_index(12)
    with pytest.raises(IndexError):
        test_set.read_query(4)


def test_unknown_names_are_rejected(data_dir):
    with pytest.raises(ValueError, match="expected one of"):
        load_training_set("roxford5k", data_dir=data_dir)
    with pytest.raises(ValueError, match="expected one of"):
        load_test_set("sfm120k", data_dir=data_dir)


def test_custom_synthetic_config(tmp_path):
    from remap_jax.data.synthetic.config import SyntheticConfig

    cfg = SyntheticConfig(
        image_size=48, canonical_size=64, num_test_landmarks=1, num_val_landmarks=0,
        train_views_per_landmark=2, queries_per_landmark=1, index_views_per_landmark=2, num_distractors=1,
        num_collage_landmarks=2, collage_views_per_landmark=2,
    )
    ts = load_test_set("synthetic_landmarks", data_dir=str(tmp_path), synthetic_config=cfg)
    assert ts.num_queries == 1 and ts.num_index == 3
    assert max(ts.read_index(0).shape[:2]) == 48
    tr = load_training_set("synthetic_landmarks", data_dir=str(tmp_path), synthetic_config=cfg)
    assert tr.val is None and tr.num_images == 2 * 16 + 2 * 2  # 17 photos, 1 for test; 2 collages


def test_roxford_with_distractors_from_manual_dir(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    write_fake_roxford(manual)
    write_fake_revisitop1m(manual)
    ts = load_test_set(
        "roxford5k", data_dir=str(tmp_path / "data"), manual_dir=str(manual), distractors="revisitop1m/tars_1"
    )
    assert ts.num_queries == 2 and ts.num_index == 6 + 3 and ts.num_distractors == 3
    assert ts.read_query(0).shape == (12, 18, 3)
    assert ts.read_query(0, crop=False).shape == (20, 28, 3)
    assert ts.read_index(8).shape == (20, 28, 3)  # a distractor
    np.testing.assert_array_equal(ts.gnd[1]["easy"], [3])


def test_image_list_reads_lazily_in_order(train_set):
    reads = []

    def read(i):
        reads.append(i)
        return train_set.read(i)

    images = ImageList(read, [5, 2, 7], transform=lambda im: im[:4])
    assert len(images) == 3 and reads == []  # nothing read yet
    np.testing.assert_array_equal(images[1], train_set.read(2)[:4])
    assert reads == [2]
    assert len(images[1:]) == 2 and list(images[1:].indices) == [2, 7]
    assert len(ImageList(read, 4)) == 4


def test_any_tar_prefix_config(tmp_path):
    from remap_jax.data.records import get_builder

    assert get_builder("revisitop1m/tars_3", str(tmp_path)).builder_config.num_tars == 3
    assert get_builder("revisitop1m/tars_10", str(tmp_path)).builder_config.num_tars == 10
    assert get_builder("gldv2_clean/tars_42", str(tmp_path)).builder_config.num_tars == 42
