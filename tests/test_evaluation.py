"""remap_jax.evaluation.benchmark (describe a test set, rank, score, write results) and the `train.eval`
command."""

import json
import os

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from remap_jax import Extractor
from remap_jax.evaluation.benchmark import evaluate_descriptors, run_eval, save_topk_grid, validation_map


class MeanColour(nn.Module):
    """A weak but honest descriptor: the mean colour of the image, centred, L2-normalised."""

    @nn.compact
    def __call__(self, images):
        v = images.astype(jnp.float32).mean((1, 2)) - 127.5
        return v / (jnp.linalg.norm(v, axis=1, keepdims=True) + 1e-6)


def _mean_colour_extractor(**options):
    return Extractor(MeanColour(), {}, image_size=(32, 48), batch_size=4, workers=2, **options)


@pytest.fixture(scope="module")
def tiny_test_set(tmp_path_factory):
    from remap_jax.data import load_test_set

    return load_test_set("synthetic_landmarks/tiny", data_dir=str(tmp_path_factory.mktemp("tfds_eval")))


def _oracle_vectors(test_set):
    """One-hot landmark vectors built from the ground truth: a perfect descriptor."""
    nq, nd = test_set.num_queries, test_set.num_index
    q = np.zeros((nq, nq + 1), np.float32)
    db = np.zeros((nd, nq + 1), np.float32)
    db[:, nq] = 1.0  # everything starts as "other"
    for i, g in enumerate(test_set.gnd):
        q[i, i] = 1.0
        members = np.concatenate([g["easy"], g["hard"], g["junk"]]).astype(int)
        db[members, nq] = 0.0
        db[members, i] = 1.0
    return q, db


def test_evaluate_descriptors_perfect_and_qe(tiny_test_set):
    q, db = _oracle_vectors(tiny_test_set)
    res = evaluate_descriptors(q, db, tiny_test_set)
    assert res["medium"]["mAP"] == pytest.approx(100.0)
    assert res["easy"]["mAP"] == pytest.approx(100.0)
    res_qe, ranks = evaluate_descriptors(q, db, tiny_test_set, qe=True, dba=True, return_ranks=True)
    assert res_qe["medium"]["mAP"] == pytest.approx(100.0)
    assert ranks.shape == (tiny_test_set.num_index, tiny_test_set.num_queries)
    with pytest.raises(ValueError, match="one row per query"):
        evaluate_descriptors(q[:1], db, tiny_test_set)
    with pytest.raises(ValueError, match="the test set's index"):
        evaluate_descriptors(q, db[:3], tiny_test_set)


def test_run_eval_writes_valid_results_and_grid(tiny_test_set, tmp_path):
    from PIL import Image

    res = run_eval(_mean_colour_extractor(), tiny_test_set, out_dir=str(tmp_path), grid_queries=2,
                   progress=False)
    assert 0.0 <= res["medium"]["mAP"] <= 100.0 and res["seconds"] >= 0
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # per-query APs of skipped queries are null
    saved = json.loads(text)
    assert saved["medium"]["mAP"] == pytest.approx(res["medium"]["mAP"])
    grid = np.asarray(Image.open(tmp_path / "topk.png"))
    assert grid.shape[0] == 2 * 104 and grid.shape[1] > 10 * 104
    vecs = np.load(tmp_path / "descriptors.npz")
    assert vecs["queries"].shape == (4, 3) and vecs["index"].shape == (12, 3)
    assert not (tmp_path / "index.partial.npz").exists()
    # the same as describing by hand
    want_q = _mean_colour_extractor()([tiny_test_set.read_query(i) for i in range(4)])
    np.testing.assert_array_equal(vecs["queries"], want_q)


def test_run_eval_resumes_the_database_description(tiny_test_set, tmp_path, monkeypatch):
    extractor = _mean_colour_extractor()
    original = Extractor.describe_iter

    def interrupted(self, sources, bboxes=None, indices=None, **kwargs):
        for n, item in enumerate(original(self, sources, bboxes, indices, **kwargs)):
            if len(sources) == tiny_test_set.num_index and n == 2:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(Extractor, "describe_iter", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_eval(extractor, tiny_test_set, out_dir=str(tmp_path), grid_queries=0, progress=False)
    partial = np.load(tmp_path / "index.partial.npz")
    assert len(partial["ids"]) == 8  # two finished database batches of 4 were kept
    monkeypatch.setattr(Extractor, "describe_iter", original)
    calls = []

    def counting(self, sources, bboxes=None, indices=None, **kwargs):
        calls.append(len(indices))
        yield from original(self, sources, bboxes, indices, **kwargs)

    monkeypatch.setattr(Extractor, "describe_iter", counting)
    res = run_eval(extractor, tiny_test_set, out_dir=str(tmp_path), grid_queries=0, progress=False)
    assert calls == [4, 12 - 8]  # the queries, then only the missing database images
    reference = run_eval(extractor, tiny_test_set, grid_queries=0, progress=False)
    assert res["medium"]["mAP"] == reference["medium"]["mAP"]
    # a cache written by another model is ignored, not mixed in
    np.savez(tmp_path / "index.partial.npz", **{k: partial[k] for k in partial.files})
    other = Extractor(MeanColour(), {}, image_size=(40, 48), batch_size=4)
    calls.clear()
    run_eval(other, tiny_test_set, out_dir=str(tmp_path), grid_queries=0, progress=False)
    assert calls == [4, 12]


def test_validation_map_ranks_every_other_image():
    class Val:
        labels = np.array([0, 0, 1, 1, 2, 2])
        qidx = np.array([0, 2, 4])

        def read(self, i):
            colours = [(250, 10, 10), (240, 20, 10), (10, 250, 10), (20, 240, 10), (10, 10, 250),
                       (10, 20, 240)]
            return np.full((20, 24, 3), colours[i], np.uint8)

    assert validation_map(_mean_colour_extractor(), Val()) == pytest.approx(100.0)


def test_topk_grid_colours(tiny_test_set, tmp_path):
    from PIL import Image

    g = tiny_test_set.gnd[0]
    pos, junk = list(g["easy"]) + list(g["hard"]), list(g["junk"])
    others = [i for i in range(tiny_test_set.num_index) if i not in set(pos) | set(junk)]
    order = np.array(pos[:1] + others[:1] + (junk[:1] or others[1:2]))
    ranks = np.stack([order] * tiny_test_set.num_queries, axis=1)
    save_topk_grid(str(tmp_path / "g.png"), tiny_test_set, ranks, num_queries=1, k=3, thumb=40)
    img = np.asarray(Image.open(tmp_path / "g.png"))
    cell = 48
    assert tuple(img[1, 1]) == (40, 90, 220)  # query border: blue
    assert tuple(img[1, cell + 6 + 1]) == (40, 170, 60)  # first result is a positive: green
    assert tuple(img[1, 2 * cell + 6 + 1]) == (215, 40, 40)  # then a negative: red
    third = (150, 150, 150) if junk else (215, 40, 40)
    assert tuple(img[1, 3 * cell + 6 + 1]) == third


def test_eval_command_end_to_end(tiny_test_set, tmp_path, monkeypatch, capsys):
    import train.eval as cmd

    data_dir = str(tmp_path / "tfds")

    def fake_extractor(args):
        assert args.arch == "resnet18" and args.weights is None
        return _mean_colour_extractor()

    monkeypatch.setattr(cmd, "make_extractor", fake_extractor)
    out = tmp_path / "out"
    res = cmd.main(
        ["--arch", "resnet18", "--dataset", "synthetic_landmarks/tiny", "--data-dir", data_dir, "--qe",
         "--out", str(out), "--max-side", "32"]
    )
    printed = capsys.readouterr().out
    assert "Easy" in printed and "Medium" in printed and "Hard" in printed and "alpha-QE" in printed
    assert (out / "topk.png").exists() and (out / "results.json").exists()
    assert set(res) >= {"easy", "medium", "hard"}
    with pytest.raises(SystemExit):
        cmd.main(["--dataset", "roxford5k", "--out", str(out)])  # neither --checkpoint nor --arch


def test_make_extractor_passes_model_options(monkeypatch):
    import remap_jax
    import train.eval as cmd

    calls = []

    class FakeExtractor:
        @classmethod
        def from_pretrained(cls, arch, weights=None, **options):
            calls.append(("pretrained", arch, weights, options))
            return "extractor"

        @classmethod
        def from_checkpoint(cls, path, **options):
            calls.append(("checkpoint", path, options))
            return "extractor"

    monkeypatch.setattr(remap_jax, "Extractor", FakeExtractor, raising=False)
    parser = cmd.build_parser()
    args = parser.parse_args(
        ["--arch", "resnet50", "--weights", "w.npz", "--head", "gem", "--image-size", "96", "128",
         "--scales", "1", "1.25", "--out", "o", "--dataset", "roxford5k"]
    )
    assert cmd.make_extractor(args) == "extractor"
    assert calls[-1] == ("pretrained", "resnet50", "w.npz", {"batch_size": 16, "image_size": (96, 128),
                                                             "scales": (1.0, 1.25), "head": "gem"})
    args = parser.parse_args(["--checkpoint", "ckpt", "--dtype", "bfloat16", "--out", "o", "--dataset", "x"])
    cmd.make_extractor(args)
    assert calls[-1] == ("checkpoint", "ckpt", {"batch_size": 16, "dtype": "bfloat16"})
    args = parser.parse_args(["--checkpoint", "ckpt", "--weights", "w", "--out", "o", "--dataset", "x"])
    with pytest.raises(SystemExit, match="--weights"):
        cmd.make_extractor(args)


def test_results_files_follow_the_umask(tiny_test_set, tmp_path):
    old = os.umask(0o022)
    try:
        run_eval(_mean_colour_extractor(), tiny_test_set, out_dir=str(tmp_path), grid_queries=1,
                 progress=False)
    finally:
        os.umask(old)
    for name in ("results.json", "descriptors.npz", "topk.png"):
        assert oct(os.stat(tmp_path / name).st_mode & 0o777) == oct(0o644), name


def test_eval_command_appends_distractor_feature_files(tiny_test_set, tmp_path, monkeypatch, capsys):
    import train.eval as cmd
    from remap_jax.describe.resumable import feature_arrays

    rng = np.random.default_rng(0)
    for part in range(2):
        d = rng.normal(size=(5, 3)).astype(np.float32)
        np.savez(tmp_path / f"distractors.{part}.npz",
                 **feature_arrays(d / np.linalg.norm(d, axis=1, keepdims=True),
                                  [f"d{part}_{i}" for i in range(5)], [], {}))
    monkeypatch.setattr(cmd, "make_extractor", lambda args: _mean_colour_extractor())
    common = ["--arch", "resnet18", "--dataset", "synthetic_landmarks/tiny", "--grid-queries", "0",
              "--data-dir", str(tmp_path / "tfds")]
    plain = cmd.main([*common, "--out", str(tmp_path / "plain")])
    res = cmd.main([*common, "--out", str(tmp_path / "out"), "--distractor-features",
                    str(tmp_path / "distractors.*.npz")])
    assert res["extra_distractors"] == 10 and "+ 10 distractors from feature files" in capsys.readouterr().out
    assert res["medium"]["mAP"] <= plain["medium"]["mAP"]  # more database images can only push positives down
    np.savez(tmp_path / "dup.npz", **feature_arrays(np.ones((1, 3), np.float32), ["d0_0"], [], {}))
    from remap_jax.describe.descriptor_files import FeatureFileError

    with pytest.raises(FeatureFileError, match="d0_0"):
        cmd.main([*common, "--out", str(tmp_path / "o2"), "--distractor-features",
                  str(tmp_path / "distractors.*.npz"), str(tmp_path / "dup.npz")])
