"""Head initialisation (remap_jax.fit.head_init and the train.init_head command): pair selection, cached
region
description, KL + whitening fit, outputs."""

import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

from remap_jax.fit import head_init, head_init_files, head_regions
from remap_jax.fit.head_init import HeadInitOptions
from remap_jax.nn.regions import rmac_regions
from train import init_head as init_head_command
from train.build import init_options

LAYERS = ("layer4.1", "layer4.2")
FEATURE_SHAPE = (3, 4)
REGIONS = rmac_regions(*FEATURE_SHAPE, levels=2)  # R = 5 on a 3x4 map
R = REGIONS.shape[0]
C = 8


class FakeTrainingSet:
    """20 landmarks x 4 images; the image's pixel values encode its index."""

    def __init__(self, landmarks=20, per_landmark=4):
        self.labels = np.repeat(np.arange(landmarks), per_landmark)
        self.num_images = self.labels.size
        q, p = [], []
        for lm in range(landmarks):
            members = np.flatnonzero(self.labels == lm)
            q += [members[0]] * (per_landmark - 1)
            p += list(members[1:])
        self.qidx, self.pidx = np.array(q), np.array(p)

    def read(self, i):
        return np.full((6, 8, 3), i, np.uint8)


class FakeExtractor:
    """Region descriptors where region 0 of layer 4.1 and region 3 of layer 4.2 identify the landmark."""

    def __init__(self, labels, informative=((0,), (3,)), seed=0):
        rng = np.random.default_rng(seed)
        self.labels = labels
        self.protos = rng.normal(size=(len(LAYERS), labels.max() + 1, R, C))
        self.noise = rng.normal(size=(len(LAYERS), labels.size, R, C))
        self.informative = informative
        self.calls = 0
        self.described = 0

    def regions(self, images, progress=False):
        self.calls += 1
        self.described += len(images)
        idx = np.array([images[k][0, 0, 0] for k in range(len(images))], int)
        out = {}
        for li, layer in enumerate(LAYERS):
            d = self.noise[li, idx].copy()
            for r in self.informative[li]:
                d[:, r] = self.protos[li, self.labels[idx], r] + 0.2 * self.noise[li, idx, r]
            out[layer] = d / np.linalg.norm(d, axis=-1, keepdims=True)
        if callable(progress):
            progress(len(images))
        return out


def _describe(tmp_path, fn, train_set, images, key="k"):
    return head_regions.describe_regions(fn, train_set.read, images, LAYERS,
                                         cache_dir=str(tmp_path / "cache"), cache_chunk=10, cache_key=key,
                                         progress=False)


def test_select_pairs_compact_and_valid():
    ts = FakeTrainingSet()
    images, pos, neg = head_init.select_pairs(ts.labels, ts.qidx, ts.pidx, num_positive=30,
                                              negatives_per_positive=2.0, seed=0)
    assert pos.shape == (30, 2) and neg.shape == (60, 2)
    assert np.all(np.diff(images) > 0)
    assert np.all(ts.labels[images[pos[:, 0]]] == ts.labels[images[pos[:, 1]]])
    assert np.all(ts.labels[images[neg[:, 0]]] != ts.labels[images[neg[:, 1]]])
    assert set(np.unique(pos)) == set(range(len(images)))  # every described image is in a matching pair
    all_images, all_pos, _ = head_init.select_pairs(ts.labels, ts.qidx, ts.pidx, 0, 1.0, seed=0)
    assert len(all_pos) == len(ts.qidx) and len(all_images) == ts.num_images
    with pytest.raises(ValueError, match="non-empty qidx/pidx"):
        head_init.select_pairs(ts.labels, np.array([], int), np.array([], int), 0, 1.0, 0)


def test_describe_regions_caches_and_resumes(tmp_path):
    ts = FakeTrainingSet()
    images = np.arange(0, 80, 3)  # 27 images: 3 chunks of 10, 10, 7
    fn = FakeExtractor(ts.labels)
    first = _describe(tmp_path, fn, ts, images)
    assert first["layer4.1"].shape == (27, R, C) and first["layer4.1"].dtype == np.float32
    assert fn.calls == 3 and fn.described == 27  # one extractor call per chunk
    direct = FakeExtractor(ts.labels).regions([ts.read(i) for i in images])
    np.testing.assert_allclose(first["layer4.2"], direct["layer4.2"], rtol=1e-6)
    assert sorted(os.listdir(tmp_path / "cache")) == ["chunk_00000.npz", "chunk_00001.npz", "chunk_00002.npz"]

    # Resume: nothing recomputed.
    fn2 = FakeExtractor(ts.labels)
    again = _describe(tmp_path, fn2, ts, images)
    assert fn2.calls == 0
    np.testing.assert_array_equal(again["layer4.1"], first["layer4.1"])

    # An interrupted run: a lost chunk is recomputed, the others are read back.
    os.remove(tmp_path / "cache" / "chunk_00001.npz")
    fn3 = FakeExtractor(ts.labels)
    resumed = _describe(tmp_path, fn3, ts, images)
    assert fn3.described == 10
    np.testing.assert_allclose(resumed["layer4.1"], first["layer4.1"], rtol=1e-6)

    # A corrupt chunk (a disk-full write, say) is recomputed, not fatal.
    with open(tmp_path / "cache" / "chunk_00002.npz", "wb") as f:
        f.write(b"not a zip file")
    fn_corrupt = FakeExtractor(ts.labels)
    repaired = _describe(tmp_path, fn_corrupt, ts, images)
    assert fn_corrupt.described == 7
    np.testing.assert_allclose(repaired["layer4.2"], first["layer4.2"], rtol=1e-6)

    # Another network / setting (cache key) or other images: recomputed, never mixed up.
    fn4 = FakeExtractor(ts.labels)
    _describe(tmp_path, fn4, ts, images, key="other")
    assert fn4.described == 27
    fn5 = FakeExtractor(ts.labels)
    _describe(tmp_path, fn5, ts, images + 1, key="other")
    assert fn5.described == 27


def test_describe_regions_rejects_missing_layer(tmp_path):
    class OneLayer:
        def regions(self, images, progress=False):
            return {"layer4.1": np.zeros((len(images), R, C))}

    ts = FakeTrainingSet()
    with pytest.raises(ValueError, match="expected 'layer4.2'"):
        head_regions.describe_regions(OneLayer(), ts.read, np.arange(4), LAYERS, progress=False)


def _fit(tmp_path, **overrides):
    ts = FakeTrainingSet()
    images, pos, neg = head_init.select_pairs(ts.labels, ts.qidx, ts.pidx, 0, 2.0, seed=0)
    desc = _describe(tmp_path, FakeExtractor(ts.labels), ts, images)
    options = HeadInitOptions(**{"whitening_ridge": 0.0, **overrides})
    return desc, pos, head_init.compute_head_init(desc, pos, neg, LAYERS, REGIONS, FEATURE_SHAPE,
                                                  out_dim=6, options=options)


@pytest.mark.parametrize("estimator", ["histogram", "kde"])
def test_compute_head_init_weights_informative_regions(tmp_path, estimator):
    _, _, init = _fit(tmp_path, estimator=estimator, bins=16)
    assert init.alpha.shape == (2, R) and init.kl.shape == (2, R)
    np.testing.assert_allclose(init.alpha.mean(), 1.0, rtol=1e-5)
    others = [r for r in range(R) if r != 0]
    assert init.alpha[0, 0] > 3 * init.alpha[0, others].max()
    others = [r for r in range(R) if r != 3]
    assert init.alpha[1, 3] > 3 * init.alpha[1, others].max()
    assert init.w.shape == (6, 2 * C) and init.b.shape == (6,)
    assert set(init.alpha_init) == set(LAYERS)


def test_compute_head_init_whitening_is_fit_on_alpha_pooled_descriptors(tmp_path):
    desc, pos, init = _fit(tmp_path, whitening="lw")
    x = head_init.pool_descriptors(desc, init.alpha, LAYERS).astype(np.float64)
    diff = (x[pos[:, 0]] - x[pos[:, 1]]) @ init.w.T.astype(np.float64)
    np.testing.assert_allclose(diff.T @ diff / len(pos), np.eye(6), atol=2e-3)  # the Lw property
    _, _, pca = _fit(tmp_path, whitening="pca")
    y = x @ pca.w.T.astype(np.float64) + pca.b
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(6), atol=2e-3)
    _, _, none = _fit(tmp_path, whitening="none")
    assert none.w is None and none.whitening_init is None
    with pytest.raises(ValueError, match="whitening"):
        _fit(tmp_path, whitening="zca")


def test_compute_head_init_explains_rank_problems(tmp_path):
    ts = FakeTrainingSet()
    images, pos, neg = head_init.select_pairs(ts.labels, ts.qidx, ts.pidx, 0, 1.0, seed=0)
    desc = {k: np.tile(v, (1, 1, 20)) for k, v in _describe(tmp_path, FakeExtractor(ts.labels), ts,
                                                            images).items()}  # C=160, D=320 > 80 images
    options = HeadInitOptions(whitening="pca", whitening_ridge=0.0)
    with pytest.raises(ValueError, match="smaller out_dim"):
        head_init.compute_head_init(desc, pos, neg, LAYERS, REGIONS, FEATURE_SHAPE, options=options)
    options = dataclasses.replace(options, whitening_ridge=1e-3)  # the default: defined at full dimension
    init = head_init.compute_head_init(desc, pos, neg, LAYERS, REGIONS, FEATURE_SHAPE, options=options)
    assert init.w.shape == (320, 320) and np.all(np.isfinite(init.w))


def test_outputs_round_trip_and_png(tmp_path):
    _, _, init = _fit(tmp_path)
    summary = {"note": "test"}
    paths = head_init_files.write_outputs(str(tmp_path / "work"), init, summary)
    loaded = head_init_files.load_head_init(paths["head_init.npz"])
    assert loaded.layers == LAYERS and loaded.feature_shape == FEATURE_SHAPE
    np.testing.assert_array_equal(loaded.alpha, init.alpha)
    np.testing.assert_array_equal(loaded.w, init.w)
    np.testing.assert_array_equal(loaded.regions, init.regions)
    with Image.open(paths["region_weights.png"]) as png:
        assert png.size[0] > 200 and png.size[1] > 200
    assert json.load(open(paths["init_head.json"])) == summary
    with pytest.raises(ValueError, match="computed for layers"):
        head_init_files.load_head_init(paths["head_init.npz"], layers=LAYERS[::-1])
    with pytest.raises(FileNotFoundError, match="train.init_head"):
        head_init_files.load_head_init(str(tmp_path / "missing.npz"))


def test_init_options_reject_unknown_keys_and_bad_values():
    import ml_collections

    config = ml_collections.ConfigDict({"init_head": {"bins": 64}})
    assert init_options(config).bins == 64
    assert init_options(ml_collections.ConfigDict({"seed": 0})).bins == 32
    config = ml_collections.ConfigDict({"init_head": {"binz": 64}})
    with pytest.raises(ValueError, match="unknown keys"):
        init_options(config)
    bad = [("estimator", "parzen", "'histogram' or 'kde'"), ("smoothing", 0.0, "> 0"),
           ("whitening", "zca", "'lw', 'pca' or 'none'"), ("whitening_power", 2.0, r"in \[0, 1\]"),
           ("cache_dtype", "int8", "float16")]
    for field, value, expected in bad:
        config = ml_collections.ConfigDict({"init_head": {field: value}})
        with pytest.raises(ValueError, match=f"config.init_head.{field}: expected .*{expected}"):
            init_options(config)


def _features(seed=0, batch=3, shape=(3, 4), channels=(8, 6)):
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    return {layer: jnp.asarray(np.maximum(rng.normal(size=(batch, *shape, c)), 0), jnp.float32)
            for layer, c in zip(LAYERS, channels, strict=True)}


def test_pool_descriptors_and_param_tree_match_remap_head():
    import jax

    from remap_jax.fit.whitening import apply_whitening
    from remap_jax.nn import heads

    feats = _features()
    regions = heads.region_descriptors(feats, LAYERS, levels=2)
    assert all(np.shape(regions[layer])[1] == R for layer in LAYERS)
    rng = np.random.default_rng(1)
    alpha = rng.uniform(0.1, 2.0, size=(2, R)).astype(np.float32)
    w = rng.normal(size=(5, 14)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    init = head_init.HeadInit(LAYERS, alpha, alpha, w, b, REGIONS, FEATURE_SHAPE)
    head = heads.REMAPHead(layers=LAYERS, levels=2, out_dim=5, alpha_init=init.alpha_init,
                           whitening_init=init.whitening_init)
    variables = head.init(jax.random.key(0), feats)
    expected = apply_whitening(head_init.pool_descriptors({k: np.asarray(v) for k, v in regions.items()},
                                                          alpha, LAYERS), w, b)
    np.testing.assert_allclose(np.asarray(head.apply(variables, feats)), expected, rtol=1e-4, atol=1e-5)
    # head_params.msgpack holds exactly the head's parameter tree.
    tree = head_init_files.head_param_tree(init)
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    assert jax.tree_util.tree_structure(tree) == jax.tree_util.tree_structure(params)
    for got, want in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


class PatternTrainingSet(FakeTrainingSet):
    """Images made of a per-landmark random pattern plus per-image noise, 40 x 48 pixels."""

    def __init__(self):
        super().__init__(landmarks=6, per_landmark=4)
        rng = np.random.default_rng(0)
        self._patterns = rng.integers(0, 255, size=(6, 40, 48, 3))
        self._noise = rng.integers(-40, 40, size=(self.num_images, 40, 48, 3))

    def read(self, i):
        return np.clip(self._patterns[self.labels[i]] + self._noise[i], 0, 255).astype(np.uint8)


def test_run_end_to_end_with_real_backbone_and_resume(tmp_path, monkeypatch, capsys):
    """The command body on a tiny ResNet-18 setting; only the training set is a stand-in."""
    import jax

    import remap_jax.data
    from remap_jax.nn import heads
    from train import build
    from train.configs import demo

    monkeypatch.setattr(remap_jax.data, "load_training_set", lambda name, data_dir=None: PatternTrainingSet())
    config = demo.get_config()
    config.model.arch = "resnet18"
    config.model.taps = ("layer4.0", "layer4.1")
    config.model.head = "remap"
    config.model.pretrained = ""
    config.image_size = config.test_image_size = (64, 96)
    config.model.levels = 2
    config.model.out_dim = 32
    config.describe_batch_size = 8
    config.init_head.cache_chunk = 16
    workdir = str(tmp_path / "init")
    init = init_head_command.run(config, workdir)
    assert init.feature_shape == (2, 3)
    r = init.regions.shape[0]
    assert init.alpha.shape == (2, r) and np.all(np.isfinite(init.alpha)) and np.all(init.alpha >= 0)
    assert init.w.shape == (32, 1024) and np.all(np.isfinite(init.w))
    for name in ("head_init.npz", "head_params.msgpack", "region_weights.png", "init_head.json"):
        assert os.path.exists(os.path.join(workdir, name))
    summary = json.load(open(os.path.join(workdir, "init_head.json")))
    assert summary["num_positive_pairs"] == 18 and summary["backbone_weights"] == "random init (seed 0)"

    # The trainer starts from a head initialised from the file.
    config.head_init = os.path.join(workdir, "head_init.npz")
    params = build.initial_variables(build.build_model(config), config, jax.random.key(0))["params"]["head"]
    np.testing.assert_allclose(params["whiten"]["kernel"], init.w.T)
    np.testing.assert_allclose(params[heads.stream_name("layer4.0")]["alpha"], init.alpha[0])
    np.testing.assert_allclose(params[heads.stream_name("layer4.1")]["alpha"], init.alpha[1])

    # A second run reads every region descriptor back from the cache.
    chunks = sorted(os.listdir(os.path.join(workdir, "region_cache")))
    mtimes = [os.path.getmtime(os.path.join(workdir, "region_cache", c)) for c in chunks]
    capsys.readouterr()
    again = init_head_command.run(config, workdir)  # head_init set: still described with the start network
    assert "24 images read from the cache" in capsys.readouterr().out
    assert mtimes == [os.path.getmtime(os.path.join(workdir, "region_cache", c)) for c in chunks]
    np.testing.assert_array_equal(again.alpha, init.alpha)
