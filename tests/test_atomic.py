import os

import numpy as np
import pytest

from remap_jax.runtime import atomic


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_write(str(path), "w") as f:
        f.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]


def test_save_npz_keeps_the_given_name(tmp_path):
    path = str(tmp_path / "db.partial.npz")
    atomic.save_npz(path, a=np.arange(3))
    assert os.listdir(tmp_path) == ["db.partial.npz"]
    np.testing.assert_array_equal(np.load(path)["a"], np.arange(3))


def test_replace_dir_swaps_a_folder_in_whole(tmp_path):
    old, new = tmp_path / "index", tmp_path / ".index.tmp"
    old.mkdir()
    (old / "a").write_text("1")
    new.mkdir()
    (new / "b").write_text("2")
    atomic.replace_dir(str(new), str(old))
    assert sorted(os.listdir(old)) == ["b"]
    assert sorted(os.listdir(tmp_path)) == ["index"]


def test_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic.save_npz(str(tmp_path / "a.npz"), x=np.arange(2))
        atomic.write_json(str(tmp_path / "a.json"), {"x": 1})
        folder = atomic.make_temp_dir(str(tmp_path / "index"))
        atomic.replace_dir(folder, str(tmp_path / "index"))
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "a.npz").st_mode & 0o777) == oct(0o640)
    assert oct(os.stat(tmp_path / "a.json").st_mode & 0o777) == oct(0o640)
    assert oct(os.stat(tmp_path / "index").st_mode & 0o777) == oct(0o750)


def test_json_is_always_valid(tmp_path):
    import json

    path = str(tmp_path / "r.json")
    atomic.write_json(path, {"mAP": np.float32(0.5), "aps": np.array([1.0, np.nan]), "n": np.int64(3),
                             "inf": float("inf"), "ok": np.bool_(True), "nested": [(1, 2)]})
    text = open(path).read()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"mAP": 0.5, "aps": [1.0, None], "n": 3, "inf": None, "ok": True,
                                "nested": [[1, 2]]}
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        atomic.to_json({"x": object()})
