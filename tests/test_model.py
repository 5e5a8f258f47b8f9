"""RetrievalModel (backbone taps + head), multi-scale description, and the export format round trip."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remap_jax.data.images import normalize
from remap_jax.model import (
    RetrievalModel,
    combine_scales,
    describe_multiscale,
    init_variables,
    load_exported,
    model_from_config,
    save_exported,
)
from remap_jax.nn import backbones as bb
from remap_jax.nn import heads

TAPS = ("layer4.0", "layer4.1")
CONFIG = {"arch": "resnet18", "taps": list(TAPS), "head": "remap", "levels": 2, "include_global": False,
          "whiten": True, "out_dim": 256, "p_init": 3.0, "dtype": "float32", "image_size": [96, 128],
          "scales": [1.0]}


def _images(shape=(2, 96, 128, 3), seed=0):
    """Pixel values in [0, 255] (what the model takes; it normalises them itself)."""
    return jnp.asarray(np.random.default_rng(seed).uniform(0, 255, shape), jnp.float32)


@functools.cache
def _jit_apply(module):
    """One jitted apply per (hashable) module, so compiled programs are shared between tests."""
    return jax.jit(module.apply, static_argnames=("taps",))


@functools.cache
def _model_and_variables():
    model = model_from_config(CONFIG)
    variables = init_variables(model, jax.random.key(0), (1, 96, 128, 3))
    return model, jax.tree.map(np.asarray, variables)


def test_model_structure_and_output():
    model, variables = _model_and_variables()
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 96, 128, 3), jnp.float32))
    assert jax.tree.map(lambda x: x.shape, dict(shapes)) == jax.tree.map(lambda x: x.shape, variables)
    assert set(variables) == {"params", "batch_stats"}
    assert set(variables["params"]) == {"backbone", "head"}
    assert set(variables["batch_stats"]) == {"backbone"}
    assert set(variables["params"]["head"]) == {heads.stream_name(t) for t in TAPS} | {"whiten"}
    assert variables["params"]["head"]["whiten"]["kernel"].shape == (1024, 256)
    out = _jit_apply(model)(variables, _images())
    assert out.shape == (2, 256) and out.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    # Same as running the parts by hand.
    backbone = bb.create_backbone("resnet18")
    maps = _jit_apply(backbone)(
        {"params": variables["params"]["backbone"], "batch_stats": variables["batch_stats"]["backbone"]},
        normalize(_images()), taps=TAPS,
    )
    head = heads.REMAPHead(layers=TAPS, levels=2, out_dim=256)
    manual = _jit_apply(head)({"params": variables["params"]["head"]}, maps)
    np.testing.assert_allclose(out, manual, rtol=1e-4, atol=1e-5)


def test_bfloat16_backbone_gives_float32_unit_descriptors():
    _, variables = _model_and_variables()
    model = model_from_config(CONFIG, dtype=jnp.bfloat16)
    out = _jit_apply(model)(variables, _images())
    ref = _jit_apply(_model_and_variables()[0])(variables, _images())
    assert out.dtype == jnp.float32
    assert float(jnp.min(jnp.sum(out * ref, axis=1))) > 0.99


def test_baseline_heads_plug_in():
    backbone = bb.create_backbone("resnet18")
    backbone_variables = bb.init_backbone("resnet18", jax.random.key(0))
    baselines = (heads.GeM(layers=("layer4",), whiten=False), heads.MAC(layers=("layer3", "layer4")))
    for head in baselines:
        model = RetrievalModel(backbone=backbone, head=head, taps=tuple(head.layers))
        variables = init_variables(model, jax.random.key(0), (1, 64, 64, 3), backbone_variables)
        assert variables["params"]["backbone"] is backbone_variables["params"]
        out = _jit_apply(model)(variables, _images((2, 64, 64, 3)))
        assert out.shape[0] == 2
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_describe_multiscale():
    model, variables = _model_and_variables()
    x = _images()
    single = _jit_apply(model)(variables, x)
    one = jax.jit(functools.partial(describe_multiscale, model, scales=(1.0,)))(variables, x)
    np.testing.assert_allclose(one, single, rtol=1e-5)
    upscaled = jax.image.resize(x, (2, 120, 160, 3), "linear")
    fn = jax.jit(functools.partial(describe_multiscale, model, scales=(1.0, 1.25), weights=(1.0, 0.5)))
    ms = fn(variables, x)
    expected = single + 0.5 * _jit_apply(model)(variables, upscaled)
    expected = expected / jnp.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(ms, expected, rtol=1e-4, atol=1e-5)
    # per-scale batches given explicitly (same shapes: reuses the compiled program of `fn`'s pieces)
    given = combine_scales([single, _jit_apply(model)(variables, upscaled)], weights=(1.0, 0.5))
    np.testing.assert_allclose(given, expected, rtol=1e-4, atol=1e-5)
    given = jax.eval_shape(
        functools.partial(describe_multiscale, model, scales=(1.0, 1.25)), variables, [x, upscaled]
    )
    assert given.shape == (2, 256)
    with pytest.raises(ValueError, match="2 batches for 1 scales"):
        describe_multiscale(model, variables, [x, x], scales=(1.0,))
    with pytest.raises(ValueError, match="expected 2"):
        combine_scales([single, single], weights=(1.0,))


def test_export_round_trip(tmp_path):
    model, variables = _model_and_variables()
    path = str(tmp_path / "export")
    save_exported(path, CONFIG, variables)
    config, loaded = load_exported(path)
    assert config["arch"] == "resnet18" and config["format"] == "remap-jax-export" and config["version"] == 1
    assert config["overlap"] == 0.4 and config["scale_weights"] is None  # defaults filled
    with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["out_dim"] == 256
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, variables))
    rebuilt = model_from_config(config)
    assert rebuilt == model  # same module: the compiled program is reused
    expected = _jit_apply(model)(variables, _images())
    np.testing.assert_allclose(_jit_apply(rebuilt)(loaded, _images()), expected, rtol=1e-6)
    # Re-export over an existing export replaces it whole.
    save_exported(path, {**CONFIG, "scales": [1.0, 1.25]}, variables)
    assert load_exported(path)[0]["scales"] == [1.0, 1.25]
    assert sorted(os.listdir(tmp_path)) == ["export"]


def test_export_orbax_variant(tmp_path):
    import orbax.checkpoint as ocp

    _, variables = _model_and_variables()
    path = tmp_path / "export"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(CONFIG))
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(str(path / "checkpoint"), variables)
    ckpt.wait_until_finished()
    _, loaded = load_exported(str(path))
    np.testing.assert_array_equal(
        loaded["params"]["head"]["whiten"]["kernel"], variables["params"]["head"]["whiten"]["kernel"]
    )


def test_export_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_exported(str(tmp_path))
    with pytest.raises(ValueError, match="taps: missing required field"):
        save_exported(str(tmp_path / "e"), {"arch": "resnet18"}, {})
    with pytest.raises(ValueError, match=r"taps: \['layer9'\] are not blocks of resnet18"):
        model_from_config({"arch": "resnet18", "taps": ["layer9"]})
    with pytest.raises(ValueError, match="head = 'netvlad': expected one of"):
        model_from_config({**CONFIG, "head": "netvlad"})
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(FileNotFoundError, match="neither params.msgpack"):
        load_exported(str(tmp_path))
    assert not os.path.exists(tmp_path / "e")


def test_head_params_replace_the_initial_head():
    model, _ = _model_and_variables()
    alpha = np.linspace(0.5, 1.5, 8).astype(np.float32)
    variables = init_variables(model, jax.random.key(0), (1, 96, 128, 3),
                               head_params={heads.stream_name("layer4.1"): {"alpha": alpha}})
    np.testing.assert_array_equal(variables["params"]["head"][heads.stream_name("layer4.1")]["alpha"], alpha)
    assert np.all(variables["params"]["head"][heads.stream_name("layer4.0")]["alpha"] == 1.0)
    with pytest.raises(ValueError, match="has shape \\(3,\\), the model needs \\(8,\\)"):
        init_variables(model, jax.random.key(0), (1, 96, 128, 3),
                       head_params={heads.stream_name("layer4.1"): {"alpha": np.ones(3)}})
    with pytest.raises(ValueError, match="head/stream_layer9 is not a parameter"):
        init_variables(model, jax.random.key(0), (1, 96, 128, 3),
                       head_params={"stream_layer9": {"alpha": alpha}})


def test_spec_errors_name_every_bad_field():
    from remap_jax.model import spec_errors

    errors = spec_errors({**CONFIG, "levels": 0, "dtype": "float8", "scale_weights": [1.0, 2.0]})
    assert any(e.startswith("levels = 0: expected") for e in errors)
    assert any(e.startswith("dtype = 'float8'") for e in errors)
    assert any(e.startswith("scale_weights") for e in errors)
    assert spec_errors(CONFIG) == []
