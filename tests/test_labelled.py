"""Your own images: folder / CSV / ground-truth JSON spellings, the bad-data report, rebuilds when the listing
changes, validation held out by label, the labelled protocol (mAP, mP@k, Recall@k) and `remap-eval`."""

import json
import os

import numpy as np
import pytest

from remap_jax.data import labelled, load_test_set, load_training_set
from remap_jax.data.ground_truth import read_ground_truth
from remap_jax.data.images import encode_jpeg, load_rgb
from remap_jax.evaluation import metrics


def _image(seed: int, size=(24, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_jpeg(rng.integers(0, 256, (*size, 3), dtype=np.uint8), quality=90)


def _write(path, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def make_tree(root, labels=("cat", "dog", "owl", "elk"), per_label=3, seed=0):
    """root/<label>/[sub/]<i>.jpg; returns the relative paths in listing order."""
    rel = []
    for k, label in enumerate(labels):
        for i in range(per_label):
            name = os.path.join(label, "sub" if i == 2 else "", f"{i}.jpg")  # any depth under a label
            _write(os.path.join(root, name), _image(seed + 100 * k + i))
            rel.append(os.path.normpath(name))
    return rel


@pytest.fixture
def messy(tmp_path):
    """A folder with every kind of bad data next to three good labels."""
    root = tmp_path / "messy"
    make_tree(str(root), labels=("a", "b", "c"))
    _write(str(root / "a" / "notes.txt"), b"not an image")  # non-image file
    _write(str(root / "b" / "broken.jpg"), b"\xff\xd8 truncated")  # unreadable image
    _write(str(root / "single" / "only.jpg"), _image(7))  # a label with one image
    os.makedirs(root / "empty")  # an empty label folder
    _write(str(root / "stray.jpg"), _image(8))  # a file outside a label folder
    os.symlink(root / "c" / "0.jpg", root / "c" / "same_as_0.jpg")  # the same file twice
    return root


def test_folder_spelling_builds_pairs_val_by_label_and_reports_bad_data(messy, tmp_path, capsys):
    train = load_training_set(f"folder:{messy}?val=1", data_dir=str(tmp_path / "tfds"))
    printed = capsys.readouterr().out
    report = labelled.DataReport.from_dict(train.report)
    assert report.skipped["non_image_files"] == {"count": 1, "first": ["a/notes.txt"]}
    assert report.count("unreadable_images") == 1 and report.skipped["unreadable_images"]["first"] == [
        "b/broken.jpg"]
    assert report.count("single_image_labels") == 1 and report.skipped["single_image_labels"]["first"] == [
        "single"]
    assert report.count("empty_label_folders") == 1 and report.count("files_outside_label_folders") == 1
    assert report.count("duplicate_paths") == 1
    for line in ("skipped 1 non-image files", "skipped 1 unreadable images", "b/broken.jpg",
                 "skipped 1 labels with one image", "empty/"):
        assert line in printed
    # 3 good labels of 3 + the single: one good label held out for validation, by label
    assert train.val is not None and len(np.unique(train.val.labels)) == 1
    assert not set(train.labels.tolist()) & set(train.val.labels.tolist())
    assert train.num_images + train.val.num_images == 3 * 3 + 1
    for split in (train, train.val):
        assert np.all(split.labels[split.qidx] == split.labels[split.pidx])
        assert np.all(split.qidx != split.pidx)
    assert train.read(0).dtype == np.uint8 and train.read(0).shape == (24, 32, 3)
    # the record is the file: same pixels as decoding it directly
    assert "folder:" in train.name and "@" in train.name


def test_val_fraction_count_and_errors(tmp_path):
    root = tmp_path / "t"
    make_tree(str(root), labels=[f"l{i}" for i in range(10)], per_label=2)
    data_dir = str(tmp_path / "tfds")
    by_fraction = load_training_set(f"folder:{root}?val=0.2&seed=3", data_dir=data_dir)
    assert len(np.unique(by_fraction.val.labels)) == 2 and len(np.unique(by_fraction.labels)) == 8
    none = load_training_set(f"folder:{root}?val=0", data_dir=data_dir)
    assert none.val is None and none.num_images == 20
    with pytest.raises(ValueError, match="option val=10: 10 validation labels would leave"):
        load_training_set(f"folder:{root}?val=10", data_dir=data_dir)
    with pytest.raises(ValueError, match=r"unknown options \['vla'\]"):
        load_training_set(f"folder:{root}?vla=3", data_dir=data_dir)
    with pytest.raises(labelled.DatasetFileError, match="not a directory; expected root/<label>/<image>"):
        load_training_set(f"folder:{tmp_path / 'nowhere'}", data_dir=data_dir)
    os.makedirs(tmp_path / "hollow" / "a")
    with pytest.raises(labelled.DatasetFileError, match="no images found"):
        load_training_set(f"folder:{tmp_path / 'hollow'}", data_dir=data_dir)
    singles = tmp_path / "singles"
    make_tree(str(singles), labels=("x", "y"), per_label=1)
    with pytest.raises(labelled.DatasetFileError, match="no label has two readable training images"):
        load_training_set(f"folder:{singles}?val=0", data_dir=data_dir)


def test_changed_listing_is_rebuilt_never_stale(tmp_path):
    root = tmp_path / "t"
    make_tree(str(root))
    data_dir = str(tmp_path / "tfds")
    first = load_training_set(f"folder:{root}?val=0", data_dir=data_dir)
    again = load_training_set(f"folder:{root}?val=0", data_dir=data_dir)
    assert again.name == first.name  # same listing: the build is reused
    builds = os.listdir(os.path.join(data_dir, "user_images"))
    assert len(builds) == 1
    new = _image(999)
    _write(str(root / "cat" / "0.jpg"), new)  # same name, new content
    changed = load_training_set(f"folder:{root}?val=0", data_dir=data_dir)
    assert changed.name != first.name and len(os.listdir(os.path.join(data_dir, "user_images"))) == 2
    np.testing.assert_array_equal(changed.read(0), load_rgb(new))
    assert not np.array_equal(first.read(0), changed.read(0))
    _write(str(root / "cat" / "3.jpg"), _image(1000))  # a new image
    assert load_training_set(f"folder:{root}?val=0", data_dir=data_dir).num_images == 13


def test_csv_spelling_relative_absolute_split_and_bad_rows(tmp_path, capsys):
    root = tmp_path / "imgs"
    rel = make_tree(str(root), labels=("a", "b", "c", "d", "e"))
    rows = [("path", "label", "split")]
    rows += [(f"imgs/{p}", p.split(os.sep)[0], "train") for p in rel[:9]]  # a, b, c: train
    rows += [(str(root / p), p.split(os.sep)[0], "val") for p in rel[9:12]]  # d: val, absolute paths
    rows += [(f"imgs/{p}", "e", "test") for p in rel[12:]]  # e: test rows
    rows += [("imgs/missing.jpg", "a", "train"), ("imgs/a/0.jpg", "", "train"),  # missing file, blank label
             (f"imgs/{rel[0]}", "a", "train")]  # the same path again
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("\n".join(",".join(r) for r in rows) + "\n")
    train = load_training_set(f"csv:{csv_path}", data_dir=str(tmp_path / "tfds"))
    report = labelled.DataReport.from_dict(train.report)
    assert report.skipped["missing_files"] == {"count": 1, "first": ["line 17: imgs/missing.jpg"]}
    assert report.skipped["blank_labels"] == {"count": 1, "first": ["line 18: imgs/a/0.jpg"]}
    assert report.count("duplicate_paths") == 1 and report.count("test_rows") == 3
    assert train.num_images == 9 and train.val.num_images == 3
    assert "skipped 1 rows whose file is missing: line 17: imgs/missing.jpg" in capsys.readouterr().out
    # the split column names the validation rows: val= cannot also be given
    with pytest.raises(ValueError, match="split column already names the validation rows"):
        load_training_set(f"csv:{csv_path}?val=1", data_dir=str(tmp_path / "tfds"))
    # the test rows are the test set; each image queries the others
    test = load_test_set(f"csv:{csv_path}", data_dir=str(tmp_path / "tfds"))
    assert test.protocol == "labels" and test.num_index == 3 and test.num_queries == 3


def test_csv_errors_name_the_file_and_layout(tmp_path):
    img = tmp_path / "x.jpg"
    _write(str(img), _image(1))
    cases = {
        "bad_header.csv": ("file,what\nx.jpg,a\n", "line 1: header \\['file', 'what'\\]; expected a header"),
        "conflict.csv": ("path,label\nx.jpg,a\nx.jpg,b\n", "line 3: x.jpg has label 'b', but line 2 gave "),
        "split.csv": ("path,label,split\nx.jpg,a,holdout\n", "line 2: split 'holdout'; expected one of"),
        "ragged.csv": ("path,label\nx.jpg,a,extra\n", "line 2: 3 fields, the header has 2"),
        "nothing.csv": ("path,label\nmissing.jpg,a\n", "no usable rows"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(labelled.DatasetFileError, match=message):
            labelled.list_csv(str(tmp_path / name))
    with pytest.raises(labelled.DatasetFileError, match="no such file; expected a CSV"):
        labelled.list_csv(str(tmp_path / "absent.csv"))


def test_tsv_and_gldv2_csv_layouts(tmp_path):
    for image_id in ("abc123", "abd456", "f00d00"):
        _write(str(tmp_path / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"),
               _image(len(image_id) + ord(image_id[-1])))
    (tmp_path / "train.csv").write_text("id,url,landmark_id\nabc123,http://x/1.jpg,7\nabd456,http://x/2.jpg,7\n"
                                        "f00d00,http://x/3.jpg,9\nzzz999,http://x/4.jpg,9\n")
    listing = labelled.list_csv(str(tmp_path / "train.csv"))
    assert listing.labels == ["7", "7", "9"] and listing.ids[0] == os.path.join("train", "a", "b", "c",
                                                                               "abc123.jpg")
    assert listing.report.count("missing_files") == 1
    (tmp_path / "train_clean.csv").write_text("landmark_id,images\n7,abc123 abd456\n9,f00d00\n")
    clean = labelled.list_csv(str(tmp_path / "train_clean.csv"))
    assert clean.labels == ["7", "7", "9"] and clean.paths == listing.paths
    (tmp_path / "list.tsv").write_text("path\tlabel\ntrain/a/b/c/abc123.jpg\t1\ntrain/a/b/d/abd456.jpg\t1\n")
    assert labelled.list_csv(str(tmp_path / "list.tsv")).labels == ["1", "1"]


def test_labelled_test_set_ground_truth_and_query_sample(tmp_path):
    root = tmp_path / "t"
    make_tree(str(root), labels=("a", "b", "c", "d"), per_label=4)
    _write(str(root / "lonely" / "0.jpg"), _image(55))
    data_dir = str(tmp_path / "tfds")
    test = load_test_set(f"folder:{root}", data_dir=data_dir)
    assert test.num_index == 17 and test.num_queries == 16 and test.protocol == "labels"
    g = test.gnd[0]
    assert g["junk"].tolist() == [0] and g["easy"].tolist() == [1, 2, 3] and g["hard"].size == 0
    np.testing.assert_array_equal(test.read_query(5), test.read_index(5))
    assert labelled.DataReport.from_dict(test.report).skipped["single_image_labels"]["first"] == ["lonely"]
    sample = load_test_set(f"folder:{root}?queries=5&seed=1", data_dir=data_dir)
    again = load_test_set(f"folder:{root}?queries=5&seed=1", data_dir=data_dir)
    assert sample.num_queries == 5 and [g["junk"][0] for g in sample.gnd] == [g["junk"][0] for g in again.gnd]


def test_ground_truth_json_revisited_and_positives(tmp_path):
    for i in range(4):
        _write(str(tmp_path / "jpg" / f"db{i}.jpg"), _image(i, size=(40, 60)))
    _write(str(tmp_path / "jpg" / "q0.jpg"), _image(10, size=(40, 60)))
    gt = {"qimlist": ["q0"], "imlist": [f"db{i}" for i in range(4)],
          "gnd": [{"easy": [0], "hard": [1], "junk": [2], "bbx": [10, 5, 40, 30]}]}
    (tmp_path / "gnd.json").write_text(json.dumps(gt))
    test = load_test_set(f"gnd:{tmp_path / 'gnd.json'}", data_dir=str(tmp_path / "tfds"))
    assert test.protocol == "revisited" and test.num_index == 4 and test.read_query(0).shape == (25, 30, 3)
    assert test.read_query(0, crop=False).shape == (40, 60, 3)
    gt["gnd"] = [{"positives": [0, 1]}]
    (tmp_path / "pos.json").write_text(json.dumps(gt))
    assert load_test_set(f"gnd:{tmp_path / 'pos.json'}", data_dir=str(tmp_path / "tfds")).protocol == "labels"
    for bad, message in (({"easy": [9], "hard": []}, "positions outside imlist"),
                         ({"wrong": []}, "expected easy\\+hard")):
        gt["gnd"] = [bad]
        (tmp_path / "bad.json").write_text(json.dumps(gt))
        with pytest.raises(labelled.DatasetFileError, match=message):
            read_ground_truth(str(tmp_path / "bad.json"))
    gt["gnd"], gt["imlist"] = [{"positives": [0]}], ["db0", "db_missing"]
    (tmp_path / "missing.json").write_text(json.dumps(gt))
    with pytest.raises(labelled.DatasetFileError, match="database image 'db_missing' not found"):
        read_ground_truth(str(tmp_path / "missing.json"))
    _write(str(tmp_path / "jpg" / "db_broken.jpg"), b"\xff\xd8 broken")
    gt["imlist"] = ["db0", "db_broken"]
    (tmp_path / "broken.json").write_text(json.dumps(gt))
    with pytest.raises(labelled.DatasetFileError, match="db_broken.jpg: .*expected a readable image"):
        load_test_set(f"gnd:{tmp_path / 'broken.json'}", data_dir=str(tmp_path / "tfds"))


def test_recall_at_k_and_the_labelled_table():
    # 3 queries over 5 images; the query itself (junk) is ranked first and removed before scoring
    ranks = np.array([[0, 3, 1, 2, 4], [1, 2, 0, 3, 4], [2, 4, 3, 0, 1]]).T  # (K, queries)
    gnd = [{"ok": [1], "junk": [0]}, {"ok": [0, 3], "junk": [1]}, {"ok": [], "junk": [2]}]
    recall, hits = metrics.recall_at_k(ranks, gnd, ks=(1, 2, 3))
    # q0 ranking without junk: 3, 1, 2, 4 -> first positive at 0-based 1; q1: 2, 0, 3, 4 -> at 1
    np.testing.assert_array_equal(hits[:2], [[0, 1, 1], [0, 1, 1]])
    assert np.isnan(hits[2]).all()
    np.testing.assert_allclose(recall, [0.0, 1.0, 1.0])
    results = metrics.evaluate_labelled(ranks, gnd, kappas=(1, 2), recall_ks=(1, 2))
    entry = results["all"]
    assert entry["num_queries"] == 2 and entry["R@1"] == 0.0 and entry["R@2"] == 100.0
    assert entry["mAP"] == pytest.approx(100 * metrics.compute_map(ranks, gnd)[0])
    table = metrics.format_revisited_table(results)
    assert "R@1" in table and "mP@2" in table and table.splitlines()[-1].startswith("All")
    assert metrics.main_setup(results) == "all"


def _feature_file(path, ids, vecs):
    np.savez(path, descriptors=np.asarray(vecs, np.float32), ids=np.asarray(ids),
             failed=np.zeros(0, "<U1"), failed_reasons=np.zeros(0, "<U1"))


def test_remap_eval_scores_feature_files_against_folder_csv_and_gnd(tmp_path, capsys):
    from remap_jax.cli import evaluate as eval_cli

    root = tmp_path / "t"
    rel = make_tree(str(root), labels=("a", "b", "c"), per_label=3)
    labels = [p.split(os.sep)[0] for p in rel]
    vecs = np.eye(3)[[("a", "b", "c").index(lab) for lab in labels]] + 0.01 * np.arange(9)[:, None]
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    feats = tmp_path / "f.npz"
    # one image without a descriptor (failed at extraction), one descriptor of an unlisted image
    _feature_file(feats, rel[1:] + ["elsewhere/x.jpg"], np.concatenate([vecs[1:], vecs[:1]]))
    assert eval_cli.main(["--features", str(feats), "--labels", f"folder:{root}", "--out",
                          str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 images without a descriptor" in out and "a/0.jpg" in out
    assert "skipped 1 descriptors whose id is not in the listing: elsewhere/x.jpg" in out
    results = json.load(open(tmp_path / "out" / "results.json"))
    assert results["all"]["mAP"] == 100.0 and results["all"]["R@1"] == 100.0
    assert results["all"]["num_queries"] == 8
    assert results["data_report"]["skipped"]["missing_features"]["count"] == 1
    # the same labels as a CSV, absolute feature ids
    rows = "".join(f"t/{p},{lab}\n" for p, lab in zip(rel, labels, strict=True))
    (tmp_path / "l.csv").write_text("path,label\n" + rows)
    _feature_file(tmp_path / "abs.npz", [str(root / p) for p in rel], vecs)
    assert eval_cli.main(["--features", str(tmp_path / "abs.npz"), "--labels",
                          f"csv:{tmp_path / 'l.csv'}"]) == 0
    assert "All" in capsys.readouterr().out
    # a ground-truth JSON: queries from their own feature file, names without extension
    gt = {"qimlist": ["q"], "imlist": [os.path.splitext(p)[0] for p in rel],
          "gnd": [{"easy": [0, 1], "hard": [2], "junk": []}]}
    _write(str(root / "q.jpg"), _image(3))
    os.remove(root / "c" / "0.jpg")  # scoring needs the descriptors, not the images
    (root / "gnd.json").write_text(json.dumps(gt))
    _feature_file(tmp_path / "q.npz", ["q.jpg"], vecs[:1])
    assert eval_cli.main(["--features", str(tmp_path / "abs.npz"), "--queries", str(tmp_path / "q.npz"),
                          "--labels", f"gnd:{root / 'gnd.json'}"]) == 0
    table = capsys.readouterr().out
    assert "Medium     100.00" in table and "Hard" in table
    # nothing matches: a one-line error, exit code 2
    _feature_file(tmp_path / "other.npz", ["zz/1.jpg"], vecs[:1])
    assert eval_cli.main(["--features", str(tmp_path / "other.npz"), "--labels", f"folder:{root}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("remap-eval: ") and "no feature id matches an image" in err
    assert len(err.strip().splitlines()) == 1


def test_config_spelling_is_checked_before_compute(tmp_path):
    from train import validate
    from train.configs.demo import get_config

    c = get_config()
    c.dataset = f"folder:{tmp_path / 'absent'}"
    c.test_dataset = f"csv:{tmp_path}/t.csv?querys=3"
    with pytest.raises(ValueError) as e:
        validate.validate_config(c)
    message = str(e.value)
    assert "config.dataset = 'folder:" in message and "an existing folder, CSV or ground-truth" in message
    assert "config.test_dataset: dataset" in message and "unknown options ['querys']" in message
    make_tree(str(tmp_path / "ok"))
    c.dataset, c.test_dataset = f"folder:{tmp_path / 'ok'}?val=1", f"folder:{tmp_path / 'ok'}?queries=4"
    validate.validate_config(c)
