"""Shown end to end: a labelled folder tree and a CSV written from the demo's photos (synthetic_landmarks
`tiny`), then training from the folder (KL + whitening head from its pairs, two steps) and evaluating on the
CSV, then `remap-extract` + `remap-eval` of the exported model on the same images, which must agree."""

import csv
import json
import os

import numpy as np
import pytest

from remap_jax.data.images import encode_jpeg
from remap_jax.data.synthetic.config import JUNK, NAMED_CONFIGS
from remap_jax.data.synthetic.dataset import generate


@pytest.fixture(scope="module")
def demo_tree(tmp_path_factory):
    """train/<label>/<i>.jpg (train + val views, junk views left out) and test.csv over test/<label>/..."""
    root = tmp_path_factory.mktemp("demo_tree")
    data = generate(NAMED_CONFIGS["tiny"])
    for split in ("train", "val"):
        for i, v in enumerate(data[split]["views"]):
            if v.difficulty != JUNK:
                path = root / "train" / f"lm_{v.landmark:03d}" / f"{split}_{i:03d}.jpg"
                os.makedirs(path.parent, exist_ok=True)
                path.write_bytes(encode_jpeg(v.image))
    rows = []
    for i, v in enumerate(data["index"]):
        label = f"lm_{v.landmark:03d}" if v.landmark >= 0 else f"distractor_{i:03d}"
        path = root / "test" / label / f"{i:03d}.jpg"
        os.makedirs(path.parent, exist_ok=True)
        path.write_bytes(encode_jpeg(v.image))
        rows.append((os.path.relpath(path, root), label))
    with open(root / "test.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return root


def test_train_and_evaluate_from_a_folder_then_score_its_features(demo_tree, tmp_path, capsys):
    from remap_jax.cli import evaluate as eval_cli
    from remap_jax.cli import extract as extract_cli
    from train.configs.demo_resnet18 import get_config
    from train.loop import train_and_evaluate

    c = get_config()
    c.dataset = f"folder:{demo_tree / 'train'}?val=2"
    c.test_dataset = f"csv:{demo_tree / 'test.csv'}"
    c.data_dir = str(tmp_path / "tfds")
    c.image_size = c.test_image_size = (64, 64)  # 2x2 map at layer4: levels 1 -> 1 region
    c.model.levels, c.model.taps = 1, ("layer4.0", "layer4.1")
    c.initialise_head = True
    c.eval_before_training = False  # the start's tables: covered by test_train_model; compiles cost here
    c.num_epochs, c.queries_per_epoch, c.batch_size, c.pool_size, c.mining_candidates = 1, 8, 4, 24, 8
    c.num_negatives, c.eval_every_epochs, c.describe_batch_size = 2, 1, 8
    c.init_head.num_positive_pairs, c.init_head.bins = 30, 8
    workdir = tmp_path / "w"
    summary = train_and_evaluate(c, str(workdir))
    out = capsys.readouterr().out
    assert summary["step"] == 2 and np.isfinite(summary["loss"]) and summary["best_val_map"] is not None
    # KL weights and whitening were learned from the folder's pairs
    init = json.load(open(workdir / "init" / "init_head.json"))
    assert init["dataset"] == c.dataset and init["num_positive_pairs"] == 30
    # the labelled protocol: one "All" row with Recall@k, in the tables and the json files
    after = json.load(open(workdir / "eval_after.json"))
    assert set(after) >= {"all", "data_report"} and {"mAP", "mP@1", "R@1", "R@10"} <= set(after["all"])
    assert 0 <= after["all"]["R@1"] <= after["all"]["R@10"] <= 100
    assert "R@1" in out and "All" in out
    # the bad-data report lands in the workdir: the tiny test set's distractors are one-image labels
    report = json.load(open(workdir / "data_report.json"))
    assert report["train"]["kept"]["val labels"] == 2
    assert report["test"]["skipped"]["single_image_labels"]["count"] == 4

    assert (workdir / "eval_after" / "topk.png").exists()
    # by features: remap-extract of the folder, remap-eval against its labels give the numbers of the
    # run's own evaluation (the CSV names the same images with the same labels; the best model is the last)
    assert summary["best_step"] == summary["step"]
    folder = f"folder:{demo_tree / 'test'}"
    assert extract_cli.main(["--checkpoint", str(workdir / "export"), "--images", str(demo_tree / "test"),
                             "--out", str(tmp_path / "test.npz"), "--quiet"]) == 0
    assert eval_cli.main(["--features", str(tmp_path / "test.npz"), "--labels", folder, "--out",
                          str(tmp_path / "scores")]) == 0
    scored = json.load(open(tmp_path / "scores" / "results.json"))
    for metric in ("mAP", "mP@5", "R@1", "R@5", "num_queries"):
        assert scored["all"][metric] == pytest.approx(after["all"][metric], abs=1e-6), metric
