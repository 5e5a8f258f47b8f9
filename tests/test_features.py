"""Tests for remap_jax.describe.descriptor_files: reading and merging remap-extract feature files."""

import numpy as np
import pytest

from remap_jax.describe.descriptor_files import FeatureFileError, feature_files, load_features


def _write(path, n, d=4, prefix="img", start=0, ids=True, **extra):
    rng = np.random.default_rng(start)
    arrays = {
        "descriptors": rng.standard_normal((n, d)).astype(np.float32),
        "failed": np.array(["broken.jpg"]),
        "meta": np.array('{"arch": "resnet50"}'),
        **extra,
    }
    if ids:
        arrays["ids"] = np.array([f"{prefix}/{i:03d}.jpg" for i in range(start, start + n)])
    np.savez(path, **arrays)
    return arrays


def test_merges_files_in_the_order_given_and_globs_sorted(tmp_path):
    (tmp_path / "parts").mkdir()
    # written out of name order: the glob's matches still come back sorted by path
    c = _write(tmp_path / "parts" / "part-2.npz", 3, start=20)
    a = _write(tmp_path / "parts" / "part-0.npz", 2, start=0)
    b = _write(tmp_path / "parts" / "part-1.npz", 4, start=10)
    extra = _write(tmp_path / "extra.npz", 1, prefix="extra")
    specs = [str(tmp_path / "extra.npz"), str(tmp_path / "parts" / "part-*.npz")]
    assert feature_files(specs) == [
        str(tmp_path / "extra.npz"),
        *(str(tmp_path / "parts" / f"part-{i}.npz") for i in range(3)),
    ]
    desc, ids = load_features(specs)
    assert desc.dtype == np.float32 and desc.shape == (10, 4) and desc.flags.c_contiguous
    order = [extra, a, b, c]
    np.testing.assert_array_equal(desc, np.concatenate([x["descriptors"] for x in order]))
    np.testing.assert_array_equal(ids, np.concatenate([x["ids"] for x in order]))
    # a recursive pattern and a single path give the same rows as listing the files
    desc2, ids2 = load_features(str(tmp_path / "**" / "part-*.npz"))
    np.testing.assert_array_equal(ids2, np.concatenate([a["ids"], b["ids"], c["ids"]]))


def test_single_file_and_float64_descriptors(tmp_path):
    arrays = _write(tmp_path / "one.npz", 5)
    np.savez(tmp_path / "f64.npz", descriptors=arrays["descriptors"].astype(np.float64), ids=arrays["ids"])
    for name in ("one.npz", "f64.npz"):
        desc, ids = load_features(tmp_path / name)  # a path-like works as a single spec
        np.testing.assert_array_equal(desc, arrays["descriptors"])
        np.testing.assert_array_equal(ids, arrays["ids"])
    _write(tmp_path / "noids.npz", 3, ids=False)
    desc, ids = load_features(str(tmp_path / "noids.npz"))
    np.testing.assert_array_equal(ids, np.arange(3))  # one file without ids: row numbers, as Index does


def test_duplicate_ids_name_the_id_and_both_files(tmp_path):
    _write(tmp_path / "a.npz", 5, start=0)
    _write(tmp_path / "b.npz", 5, start=3)  # img/003.jpg and img/004.jpg are in both
    with pytest.raises(FeatureFileError) as err:
        load_features([str(tmp_path / "a.npz"), str(tmp_path / "b.npz")])
    msg = str(err.value)
    assert "'img/003.jpg'" in msg and "a.npz (row 3)" in msg and "b.npz (row 0)" in msg
    assert "2 duplicated ids" in msg
    ids = np.array(["x", "y", "x"])
    np.savez(tmp_path / "self.npz", descriptors=np.zeros((3, 4), np.float32), ids=ids)
    with pytest.raises(FeatureFileError, match=r"'x' appears twice in .*self.npz \(rows 0 and 2\)"):
        load_features(str(tmp_path / "self.npz"))


def test_mismatched_dimensions_name_the_files(tmp_path):
    _write(tmp_path / "a.npz", 2, d=4)
    _write(tmp_path / "b.npz", 2, d=8, start=10)
    _write(tmp_path / "c.npz", 2, d=4, start=20)
    with pytest.raises(FeatureFileError) as err:
        load_features([str(tmp_path / p) for p in ("a.npz", "b.npz", "c.npz")])
    msg = str(err.value)
    assert "dimensions differ" in msg and f"D=4: {tmp_path / 'a.npz'}, {tmp_path / 'c.npz'}" in msg
    assert f"D=8: {tmp_path / 'b.npz'}" in msg


def test_bad_specs_and_files_are_named(tmp_path):
    _write(tmp_path / "a.npz", 2)
    with pytest.raises(FeatureFileError, match=r"nope.npz: no such file"):
        load_features([str(tmp_path / "a.npz"), str(tmp_path / "nope.npz")])
    with pytest.raises(FeatureFileError, match=r"z\*.npz: the pattern matches no file"):
        load_features(str(tmp_path / "z*.npz"))
    with pytest.raises(FeatureFileError, match="a.npz: named twice"):
        load_features([str(tmp_path / "a.npz"), str(tmp_path / "*.npz")])
    with pytest.raises(FeatureFileError, match="no files given"):
        load_features([])
    np.savez(tmp_path / "wrong.npz", vectors=np.zeros((3, 4)))
    with pytest.raises(FeatureFileError, match=r"wrong.npz: no 'descriptors' array \(found \['vectors'\]\)"):
        load_features(str(tmp_path / "wrong.npz"))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(FeatureFileError, match="text.npz: not a readable .npz"):
        load_features(str(tmp_path / "text.npz"))
    np.savez(tmp_path / "rank3.npz", descriptors=np.zeros((2, 3, 4), np.float32))
    with pytest.raises(FeatureFileError, match=r"rank3.npz: 'descriptors' expected rank 2"):
        load_features(str(tmp_path / "rank3.npz"))
    np.savez(tmp_path / "short.npz", descriptors=np.zeros((3, 4), np.float32), ids=np.array(["a", "b"]))
    with pytest.raises(FeatureFileError, match=r"short.npz: 'ids' has shape \(2,\), expected \(3,\)"):
        load_features(str(tmp_path / "short.npz"))
    _write(tmp_path / "noids.npz", 2, ids=False)
    with pytest.raises(FeatureFileError, match="noids.npz: no 'ids' array; several files"):
        load_features([str(tmp_path / "a.npz"), str(tmp_path / "noids.npz")])
    assert issubclass(FeatureFileError, ValueError)
