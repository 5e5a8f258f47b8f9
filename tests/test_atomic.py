import os

import numpy as np
import pytest

from remap_jax import atomic


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
