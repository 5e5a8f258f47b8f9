"""The trainer with the real parts: ResNet-18 + REMAPHead from a config, optimiser groups on the real
parameter tree, head initialisation from train.init_head, and the export read back by remap_jax.Extractor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import train as trainer
from train.configs.demo import get_config


@pytest.fixture(scope="module")
def config():
    c = get_config()
    c.image_size = c.test_image_size = (64, 64)  # 2x2 map at layer4: levels 1 -> 1 region
    c.model.levels = 1
    c.model.taps = ("layer4.0", "layer4.1")  # the tests below count channels and regions of these two taps
    return c


def test_build_model_groups_and_export_roundtrip(config, tmp_path):
    from remap_jax import Extractor
    from remap_jax.model import save_exported

    model = trainer.build_model(config)
    variables = trainer.init_variables(model, config, jax.random.key(0))
    labels = trainer.param_labels(variables["params"])
    assert labels["head"]["stream_layer4_0"]["alpha"] == "alpha"
    assert labels["head"]["whiten"]["kernel"] == "whitening"
    assert set(jax.tree_util.tree_leaves(labels["backbone"])) == {"backbone"}
    # the backbone is the seeded random init train.init_head also describes with
    from remap_jax.backbones import init_backbone

    ref = init_backbone("resnet18", jax.random.PRNGKey(config.seed), (1, 64, 64, 3))
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables["params"]["backbone"], ref["params"])
    trainer.check_eval_shapes(model, variables, config)

    save_exported(tmp_path / "export", trainer.export_config(config), variables)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    got = Extractor.from_checkpoint(str(tmp_path / "export"))(images)
    want = model.apply(variables, trainer.normalize_on_device(jnp.asarray(np.stack(images))))
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-3, atol=1e-4)


def test_head_init_file_sets_alpha_and_whitening(config, tmp_path):
    from train.init_head import HeadInit, save_head_init

    d = 1024  # two resnet18 layer4 taps of 512 channels
    rng = np.random.default_rng(0)
    alpha = np.array([[0.5], [2.0]], np.float32)
    w, b = rng.normal(size=(d, d)).astype(np.float32) * 0.01, rng.normal(size=(d,)).astype(np.float32)
    path = str(tmp_path / "head_init.npz")
    save_head_init(path, HeadInit(tuple(config.model.taps), alpha, alpha, w, b, np.zeros((1, 4), np.int32),
                                  (2, 2)))
    c = config.copy_and_resolve_references()
    c.head_init = path
    trainer.validate_config(c)
    model = trainer.build_model(c)
    params = trainer.init_variables(model, c, jax.random.key(0))["params"]["head"]
    np.testing.assert_allclose(params["stream_layer4_0"]["alpha"], [0.5])
    np.testing.assert_allclose(params["stream_layer4_1"]["alpha"], [2.0])
    np.testing.assert_allclose(params["whiten"]["kernel"], w.T)
    np.testing.assert_allclose(params["whiten"]["bias"], b)
    c.model.taps = ("layer3.1", "layer4.1")
    with pytest.raises(ValueError, match="computed for layers"):
        trainer.build_model(c)


def test_eval_size_with_another_region_count_is_refused(config):
    c = config.copy_and_resolve_references()
    c.test_image_size = (128, 160)
    model = trainer.build_model(c)
    variables = trainer.init_variables(model, c, jax.random.key(0))
    with pytest.raises(ValueError, match=r"config.test_image_size = \(128, 160\).*same region count"):
        trainer.check_eval_shapes(model, variables, c)
