"""TFDS builder tests (tfds.testing.DatasetBuilderTestCase) on tiny fake data that the tests write in the
real file formats: JPEG tars, revisitop gnd pickles, the SfM-120k db pickle, the GLDv2 csv."""

import atexit
import io
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from remap_jax.data.builders.base import resolve_inputs
from remap_jax.data.builders.revisited import OXFORD_IMAGES_URL, Revisitop1m, Roxford5k, Rparis6k
from remap_jax.data.builders.synthetic_landmarks import SyntheticLandmarks
from remap_jax.data.builders.training_sets import Gldv2Clean, Sfm120k, parse_gldv2_csv, sfm_cid_path
from remap_jax.data.images import encode_jpeg
from remap_jax.data.labelled import DatasetFileError
from remap_jax.data.synthetic.config import NAMED_CONFIGS
from remap_jax.data.synthetic.photos import (
    cell_layout,
    collage_landmark_ids,
    split_landmark_ids,
    split_landmarks,
)


def _jpeg(seed: int, size=(20, 28)) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_jpeg(rng.integers(0, 256, size=size + (3,), dtype=np.uint8))


def _write_tar(path: Path, members: dict[str, bytes]):
    mode = "w:gz" if path.name.endswith(".gz") or path.name.endswith(".tgz") else "w"
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _revisited_gnd(imlist, qimlist, query_bbx):
    gnd = []
    for q, _ in enumerate(qimlist):
        gnd.append(
            {
                "bbx": query_bbx[q],
                "easy": np.array([q + 2], np.int64),
                "hard": [q + 3],
                "junk": np.array([], np.int64),
            }
        )
    return {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}


def write_fake_roxford(root: Path):
    imlist = [f"all_souls_{i:06d}" for i in range(6)]
    _write_tar(root / "oxbuild_images-v1.tgz", {f"{n}.jpg": _jpeg(i) for i, n in enumerate(imlist)})
    gnd = _revisited_gnd(imlist, imlist[:2], [[2.0, 3.0, 20.5, 15.0], [0, 0, 10, 10]])
    (root / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(gnd))


def write_fake_rparis(root: Path):
    imlist = [f"paris_defense_{i:06d}" for i in range(4)] + [f"paris_louvre_{i:06d}" for i in range(3)]
    defense = {f"paris/defense/{n}.jpg": _jpeg(i) for i, n in enumerate(imlist[:4])}
    _write_tar(root / "paris_1-v1.tgz", defense)
    # paris_2 also holds an image that is not in imlist (ignored)
    members = {f"paris/louvre/{n}.jpg": _jpeg(10 + i) for i, n in enumerate(imlist[4:])}
    members["paris/louvre/paris_louvre_999999.jpg"] = _jpeg(99)
    _write_tar(root / "paris_2-v1.tgz", members)
    gnd = _revisited_gnd(imlist, [imlist[1], imlist[5]], [[1, 1, 9, 9], [5, 2, 25, 18]])
    (root / "gnd_rparis6k.pkl").write_bytes(pickle.dumps(gnd))


def write_fake_revisitop1m(root: Path):
    _write_tar(root / "revisitop1m.1.tar.gz", {f"jpg/{i:04d}/img{i}.jpg": _jpeg(i) for i in range(3)})


def write_fake_sfm120k(root: Path):
    cids = {s: [f"{s}cid{i:03d}abcdef{i:02d}" for i in range(n)] for s, n in (("train", 5), ("val", 3))}
    members = {}
    for split, names in cids.items():
        for i, cid in enumerate(names):
            members[f"ims/{sfm_cid_path(cid)}"] = _jpeg(i + (0 if split == "train" else 50))
    _write_tar(root / "ims.tar.gz", members)
    db = {
        "train": {"cids": cids["train"], "cluster": [0, 0, 1, 1, 1], "qidxs": [0, 2], "pidxs": [1, 3]},
        "val": {"cids": cids["val"], "cluster": [7, 7, 8], "qidxs": [0], "pidxs": [1]},
    }
    (root / "retrieval-SfM-120k.pkl").write_bytes(pickle.dumps(db))


def write_fake_gldv2(root: Path):
    ids = ["0a1b2c3d4e5f6071", "0a1b2c3d4e5f6072", "0b000000000000aa", "0c000000000000bb", "0c000000000000cc"]
    # landmark 5 has two images in the tar, landmark 6 only one (dropped), landmark 9 has two, one of which
    # lives in a tar that is not part of this build (dropped with it).
    csv = "landmark_id,images\n5,{} {}\n6,{}\n9,{} {} ffffffffffffffff\n".format(*ids)
    (root / "train_clean.csv").write_text(csv)
    members = {f"{i[0]}/{i[1]}/{i[2]}/{i}.jpg": _jpeg(k) for k, i in enumerate(ids)}
    _write_tar(root / "images_000.tar", members)


_ROOT = Path(tempfile.mkdtemp(prefix="remap_fake_tfds_"))  # fake inputs of the TFDS test cases below
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


class _FakeFilesTest(tfds.testing.DatasetBuilderTestCase):
    """TFDS's builder test over fake source files: ``EXAMPLE`` = (folder name, writer of the files); the
    files are written once per session under ``_ROOT``. Not collected itself (``__test__``)."""

    __test__ = False
    SKIP_CHECKSUMS = True
    EXAMPLE = ("", None)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__test__ = True

    @classmethod
    def setUpClass(cls):
        name, writer = cls.EXAMPLE
        folder = _ROOT / name
        if not folder.exists():
            folder.mkdir(parents=True)
            if writer is not None:
                writer(folder)
        cls.EXAMPLE_DIR = str(folder)
        super().setUpClass()


def _builder_test(dataset_class, splits, example, config=None, name=None):
    """A `_FakeFilesTest` of `dataset_class` (its `config` only, when given) expecting `splits` sizes."""
    attrs = {"DATASET_CLASS": dataset_class, "SPLITS": splits, "EXAMPLE": example}
    if config:
        attrs["BUILDER_CONFIG_NAMES_TO_TEST"] = [config]
    return type(name or f"{dataset_class.__name__}Test", (_FakeFilesTest,), attrs)


Roxford5kTest = _builder_test(Roxford5k, {"index": 6, "query": 2}, ("roxford5k", write_fake_roxford))
Rparis6kTest = _builder_test(Rparis6k, {"index": 7, "query": 2}, ("rparis6k", write_fake_rparis))
Revisitop1mTest = _builder_test(Revisitop1m, {"index": 3}, ("revisitop1m", write_fake_revisitop1m), "tars_1")
Sfm120kTest = _builder_test(Sfm120k, {"train": 5, "val": 3}, ("sfm120k", write_fake_sfm120k))
Gldv2CleanTest = _builder_test(Gldv2Clean, {"train": 4}, ("gldv2_clean", write_fake_gldv2), "tars_1")
# tiny: 14 train landmarks x 3 views + 3 collages x 2, 1 val landmark x 2, 2 test landmarks x 4 views
# + 4 distractors, 2 x 2 queries (generated: no source files)
SyntheticLandmarksTest = _builder_test(SyntheticLandmarks, {"train": 48, "val": 2, "index": 12, "query": 4},
                                       ("synthetic_landmarks", None), "tiny")
# hard_tiny: 23 training cells x 2 views + 3 collages x 2, 2 val cells x 2, 4 test cells x 3 views
# + 4 distractors, 4 x 1 queries
SyntheticLandmarksHardTest = _builder_test(
    SyntheticLandmarks, {"train": 52, "val": 4, "index": 16, "query": 4}, ("synthetic_landmarks", None),
    "hard_tiny", name="SyntheticLandmarksHardTest")


# --------------------------------------------------------------------- array_record builds and contents


def _build(builder_cls, manual_dir, tmp_path, config=None):
    builder = builder_cls(data_dir=str(tmp_path / "data"), config=config, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def test_roxford_array_record_contents(tmp_path):
    write_fake_roxford(tmp_path)
    builder = _build(Roxford5k, tmp_path, tmp_path)
    index = builder.as_data_source("index")
    queries = builder.as_data_source("query")
    assert len(index) == 6 and len(queries) == 2
    assert [index[i]["filename"] for i in range(6)] == [f"all_souls_{i:06d}.jpg".encode() for i in range(6)]
    q0 = queries[0]
    assert q0["image"].shape == (12, 18, 3)  # bbx (2, 3, 20.5, 15) rounded (half to even): x 2..20, y 3..15
    assert q0["original_image"][:2] == b"\xff\xd8"  # the original JPEG, untouched
    full = np.asarray(Image.open(io.BytesIO(q0["original_image"])))
    np.testing.assert_array_equal(q0["image"], full[3:15, 2:20])
    assert list(q0["easy"]) == [2] and list(q0["hard"]) == [3] and list(q0["junk"]) == []
    meta = builder.info.metadata
    assert meta["qimlist"] == ["all_souls_000000", "all_souls_000001"] and len(meta["gnd"]) == 2


def test_missing_file_error_names_the_file(tmp_path):
    write_fake_roxford(tmp_path)
    (tmp_path / "oxbuild_images-v1.tgz").unlink()
    with mock.patch.object(
        tfds.download.DownloadManager, "download", side_effect=OSError("network unreachable")
    ) as download:
        with pytest.raises(DatasetFileError, match=r"oxbuild_images-v1\.tgz.*manual_dir"):
            _build(Roxford5k, tmp_path, tmp_path)
    # the download went to the official location
    (requested,) = download.call_args.args
    assert requested == {"oxbuild_images-v1.tgz": OXFORD_IMAGES_URL}


def test_malformed_gnd_and_missing_images(tmp_path):
    write_fake_roxford(tmp_path)
    (tmp_path / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"imlist": []}))
    with pytest.raises(DatasetFileError, match=r"gnd_roxford5k\.pkl: expected a dict with keys"):
        _build(Roxford5k, tmp_path, tmp_path)
    (tmp_path / "gnd_roxford5k.pkl").write_bytes(b"garbage")
    with pytest.raises(DatasetFileError, match=r"gnd_roxford5k\.pkl: cannot unpickle"):
        _build(Roxford5k, tmp_path, tmp_path)
    write_fake_roxford(tmp_path)
    _write_tar(tmp_path / "oxbuild_images-v1.tgz", {"all_souls_000000.jpg": _jpeg(0)})
    with pytest.raises(DatasetFileError, match=r"oxbuild_images-v1\.tgz.*missing"):
        _build(Roxford5k, tmp_path, tmp_path)


def test_gldv2_csv_errors(tmp_path):
    bad = tmp_path / "train_clean.csv"
    bad.write_text("id,url\n1,2\n")
    with pytest.raises(DatasetFileError, match="train_clean.csv: expected the header"):
        parse_gldv2_csv(bad)
    bad.write_text("landmark_id,images\nx,abc\n")
    with pytest.raises(DatasetFileError, match="line 2: expected an integer landmark_id"):
        parse_gldv2_csv(bad)
    with pytest.raises(DatasetFileError, match="file not found"):
        parse_gldv2_csv(tmp_path / "nope.csv")


def test_gldv2_pairs_and_labels(tmp_path):
    write_fake_gldv2(tmp_path)
    builder = _build(Gldv2Clean, tmp_path, tmp_path, config="tars_1")
    meta = builder.info.metadata["train"]
    assert meta["labels"] == [5, 5, 9, 9]
    assert meta["qidx"] == [0, 1, 2, 3] and meta["pidx"] == [1, 0, 3, 2]
    source = builder.as_data_source("train")
    assert [source[i]["label"] for i in range(4)] == [5, 5, 9, 9]


def test_sfm120k_metadata_and_errors(tmp_path):
    write_fake_sfm120k(tmp_path)
    builder = _build(Sfm120k, tmp_path, tmp_path)
    assert builder.info.metadata["train"] == {"labels": [0, 0, 1, 1, 1], "qidx": [0, 2], "pidx": [1, 3]}
    src = builder.as_data_source("val")
    assert [src[i]["label"] for i in range(3)] == [7, 7, 8]
    db = pickle.loads((tmp_path / "retrieval-SfM-120k.pkl").read_bytes())
    db["train"]["pidxs"] = [1, 30]
    (tmp_path / "retrieval-SfM-120k.pkl").write_bytes(pickle.dumps(db))
    with pytest.raises(DatasetFileError, match="pidxs has indices outside"):
        _build(Sfm120k, tmp_path, tmp_path / "other")


def test_resolve_inputs_prefers_manual_dir_then_downloads(tmp_path):
    (tmp_path / "gnd_roxford5k.pkl").write_bytes(b"x")

    class FakeManager:
        manual_dir = tmp_path
        requested = None

        def download(self, urls):
            FakeManager.requested = dict(urls)
            return {name: tmp_path / "downloads" / name for name in urls}

    paths = resolve_inputs(
        FakeManager(), {"gnd_roxford5k.pkl": "http://a/gnd", "oxbuild_images-v1.tgz": "http://b/tgz"}
    )
    assert paths["gnd_roxford5k.pkl"] == tmp_path / "gnd_roxford5k.pkl"
    assert paths["oxbuild_images-v1.tgz"] == tmp_path / "downloads" / "oxbuild_images-v1.tgz"
    assert FakeManager.requested == {"oxbuild_images-v1.tgz": "http://b/tgz"}


def test_empty_distractor_tar_is_an_error(tmp_path):
    _write_tar(tmp_path / "revisitop1m.1.tar.gz", {})
    with pytest.raises(DatasetFileError, match=r"revisitop1m\.1\.tar\.gz: expected JPEG images"):
        _build(Revisitop1m, tmp_path, tmp_path, config="tars_1")


def test_synthetic_configs_versions_and_hard_metadata(tmp_path):
    from remap_jax.data import load_test_set, load_training_set

    versions = {c.name: str(SyntheticLandmarks(config=c.name).version)
                for c in SyntheticLandmarks.BUILDER_CONFIGS}
    assert versions == {"default": "1.1.0", "tiny": "1.1.0", "hard": "1.3.0", "hard_tiny": "1.2.0"}
    for config in SyntheticLandmarks.BUILDER_CONFIGS:
        assert config.synthetic == NAMED_CONFIGS[config.name]
    data_dir = str(tmp_path / "data")
    train = load_training_set("synthetic_landmarks/hard_tiny", data_dir=data_dir)
    test = load_test_set("synthetic_landmarks/hard_tiny", data_dir=data_dir)
    cfg = NAMED_CONFIGS["hard_tiny"]
    ids = split_landmark_ids(cfg)
    assert train.num_images == 52 and train.val.num_images == 4 and test.num_queries == 4
    assert set(train.labels.tolist()) == set(ids["train"]) | set(collage_landmark_ids(cfg))
    assert train.read(0).shape[2] == 3 and max(test.read_index(0).shape[:2]) == 64
    meta = SyntheticLandmarks(data_dir=data_dir, config="hard_tiny").info.metadata
    layout = cell_layout(cfg)["landmarks"]
    assert meta["photos"]["test"] == list(split_landmarks(cfg)["test"])
    assert {int(k): (v["photo"], tuple(v["box"])) for k, v in meta["cells"].items()} == {
        i: (c.photo, c.box) for i, c in layout.items()
    }
    for q, g in enumerate(test.gnd):
        assert g["easy"].size + g["hard"].size + g["junk"].size == 3  # the query landmark's 3 index views
        assert test.read_query(q).shape[0] <= test.read_query(q, crop=False).shape[0]
