"""Backbones: tap access, stopping at the deepest tap, frozen/folded BatchNorm, bfloat16, sizes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remap_jax.nn import backbones as bb

# Parameter counts of torchvision's models minus their classifier (fc / classifier.*).
TORCHVISION_FEATURE_PARAMS = {
    "resnet18": 11_689_512 - 513_000,
    "resnet34": 21_797_672 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
    "resnet101": 44_549_160 - 2_049_000,
    "resnet152": 60_192_808 - 2_049_000,
    "resnext101_32x8d": 88_791_336 - 2_049_000,
    "resnext101_64x4d": 83_455_272 - 2_049_000,
    "vgg16": 138_357_544 - 123_642_856,
}


def _randomise_bn(variables, seed=0):
    """Non-trivial BatchNorm statistics so that frozen/folded BN is actually exercised."""
    rng = np.random.default_rng(seed)

    def visit(tree, collection):
        out = {}
        for k, v in tree.items():
            if isinstance(v, dict):
                out[k] = visit(v, collection)
            elif k in ("mean", "bias") and v.ndim == 1:
                out[k] = jnp.asarray(rng.normal(0, 0.1, v.shape), jnp.float32)
            elif k in ("var", "scale"):
                out[k] = jnp.asarray(rng.uniform(0.5, 1.5, v.shape), jnp.float32)
            else:
                out[k] = v
        return out

    return {c: visit(t, c) for c, t in variables.items()}


@functools.cache
def _resnet18():
    variables = bb.init_backbone("resnet18", jax.random.key(0), (1, 32, 32, 3))
    return _randomise_bn(jax.tree.map(np.asarray, variables))


def _apply(model, variables, images, taps):
    # jit: eager op-by-op dispatch of a whole ResNet is several times slower on CPU.
    return jax.jit(model.apply, static_argnames="taps")(variables, images, taps=tuple(taps))


def _images(shape=(2, 64, 96, 3), seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("arch", sorted(TORCHVISION_FEATURE_PARAMS))
def test_parameter_count_matches_torchvision(arch):
    params = bb.variable_shapes(arch)["params"]
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) == TORCHVISION_FEATURE_PARAMS[arch]
    for x in jax.tree.leaves(bb.variable_shapes(arch)):
        assert x.dtype == jnp.float32


def test_resnet_taps_shapes_and_strides():
    model = bb.create_backbone("resnet18")
    taps = ("conv1", "bn1", "relu", "maxpool", "layer1.1", "layer2.0", "layer3", "layer4.1")
    out = _apply(model, _resnet18(), _images(), taps)
    assert set(out) == set(taps)
    assert out["conv1"].shape == (2, 32, 48, 64)
    assert out["maxpool"].shape == (2, 16, 24, 64)
    assert out["layer1.1"].shape == (2, 16, 24, 64)
    assert out["layer2.0"].shape == (2, 8, 12, 128)
    assert out["layer3"].shape == (2, 4, 6, 256)
    assert out["layer4.1"].shape == (2, 2, 3, 512)
    # relu is relu(bn1) and conv1 is the pre-BN map: they differ, and relu is non-negative.
    np.testing.assert_allclose(out["relu"], np.maximum(out["bn1"], 0), rtol=1e-6)
    assert float(jnp.min(out["relu"])) >= 0 and float(jnp.min(out["bn1"])) < 0
    assert not np.allclose(out["conv1"], out["bn1"])


def test_stage_tap_equals_its_last_block():
    out = _apply(bb.create_backbone("resnet18"), _resnet18(), _images(), ("layer3.1", "layer3"))
    np.testing.assert_array_equal(out["layer3"], out["layer3.1"])


def test_taps_do_not_depend_on_which_other_taps_are_requested():
    model = bb.create_backbone("resnet18")
    a = _apply(model, _resnet18(), _images(), ("layer2.1",))["layer2.1"]
    b = _apply(model, _resnet18(), _images(), ("layer4.1", "layer2.1"))["layer2.1"]
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _conv_count(arch, variables, taps):
    model = bb.create_backbone(arch)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, taps=taps))(variables, _images((1, 64, 64, 3)))
    return str(jaxpr).count("conv_general_dilated")


def test_computes_nothing_past_the_deepest_tap():
    v = _resnet18()
    assert _conv_count("resnet18", v, ("conv1",)) == 1
    assert _conv_count("resnet18", v, ("layer1.0",)) == 1 + 2
    assert _conv_count("resnet18", v, ("layer2.0",)) == 1 + 4 + 3  # block with a downsample conv
    assert _conv_count("resnet18", v, ("layer4",)) == 20
    # init with a shallow tap creates only the parameters it needs
    model = bb.create_backbone("resnet18")
    shallow = jax.eval_shape(functools.partial(model.init, taps=("layer1.0",)), jax.random.key(0), _images())
    assert set(shallow["params"]) == {"conv1", "layer1_0"}


def test_vgg_taps_and_torchvision_indices():
    variables = bb.init_backbone("vgg16", jax.random.key(0), (1, 32, 32, 3))
    model = bb.create_backbone("vgg16")
    taps = ("conv1_2", "pool1", "features.28", "conv5_3", "features.29", "pool5")
    out = _apply(model, variables, _images((1, 64, 96, 3)), taps)
    assert out["conv1_2"].shape == (1, 64, 96, 64)
    assert out["pool1"].shape == (1, 32, 48, 64)
    assert out["conv5_3"].shape == (1, 4, 6, 512)
    assert out["pool5"].shape == (1, 2, 3, 512)
    np.testing.assert_array_equal(out["conv5_3"], out["features.29"])
    np.testing.assert_allclose(out["conv5_3"], np.maximum(out["features.28"], 0))
    assert bb.valid_taps("vgg16")[:3] == ("features.0", "conv1_1", "features.1")
    assert bb.default_taps("vgg16") == ("conv5_2", "conv5_3")


def test_unknown_tap_error_lists_valid_names():
    model = bb.create_backbone("resnet18")
    with pytest.raises(ValueError, match=r"unknown tap name\(s\) \['layer5.0'\].*layer4\.1"):
        _apply(model, _resnet18(), _images(), ("layer4.1", "layer5.0"))
    with pytest.raises(ValueError, match="expected shape \\(B, H, W, 3\\)"):
        model.apply(_resnet18(), jnp.zeros((2, 32, 32)), taps=("layer1",))
    with pytest.raises(ValueError, match="unknown architecture 'resnet51'"):
        bb.create_backbone("resnet51")


def test_init_backbone_statistics():
    variables = bb.init_backbone("resnet18", jax.random.key(3))
    kernel = np.asarray(variables["params"]["layer3_0"]["conv2"]["conv"]["kernel"])
    assert kernel.shape == (3, 3, 256, 256)
    np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (9 * 256)), rtol=0.02)
    bn = variables["params"]["layer3_0"]["conv2"]["bn"]
    np.testing.assert_array_equal(bn["scale"], 1.0)
    np.testing.assert_array_equal(variables["batch_stats"]["layer3_0"]["conv2"]["bn"]["var"], 1.0)
    stem = lambda v: np.asarray(v["params"]["conv1"]["conv"]["kernel"])
    np.testing.assert_array_equal(stem(bb.init_backbone("resnet18", jax.random.key(3))), stem(variables))
    assert not np.allclose(stem(bb.init_backbone("resnet18", jax.random.key(4))), stem(variables))


def test_valid_and_default_taps():
    names = bb.valid_taps("resnet101")
    assert names[:5] == ("conv1", "bn1", "relu", "maxpool", "layer1.0")
    assert "layer3.22" in names and "layer3.23" not in names and names[-1] == "layer4"
    assert bb.default_taps("resnet101") == ("layer4.1", "layer4.2")
    assert bb.default_taps("resnet152") == ("layer4.1", "layer4.2")


def test_folded_batchnorm_matches_unfolded():
    taps = ("bn1", "layer2.1", "layer4.1")
    x = _images()
    ref = _apply(bb.create_backbone("resnet18"), _resnet18(), x, taps)
    folded = _apply(bb.create_backbone("resnet18", fold_bn=True), _resnet18(), x, taps)
    for t in taps:
        np.testing.assert_allclose(folded[t], ref[t], rtol=1e-4, atol=1e-4 * float(jnp.abs(ref[t]).max()))


def test_bfloat16_compute_with_float32_params():
    x = _images()
    ref = _apply(bb.create_backbone("resnet18"), _resnet18(), x, ("layer4.1",))["layer4.1"]
    model = bb.create_backbone("resnet18", dtype=jnp.bfloat16)
    variables = jax.eval_shape(functools.partial(model.init, taps=("layer4",)), jax.random.key(0), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    out = _apply(model, _resnet18(), x, ("layer4.1",))["layer4.1"]
    assert out.dtype == jnp.bfloat16
    rel = float(jnp.linalg.norm(out.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
    assert rel < 3e-2


def test_batchnorm_statistics_are_frozen():
    model = bb.create_backbone("resnet18")
    variables = _resnet18()
    apply = jax.jit(functools.partial(model.apply, taps=("layer4",), mutable=["batch_stats"]))
    _, updates = apply(variables, _images())
    jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"])

    # Gradients flow to BN scale/bias (trainable) while the statistics stay outside `params`.
    def loss(params):
        stats = variables["batch_stats"]
        maps = model.apply({"params": params, "batch_stats": stats}, _images(), taps=("layer1",))
        return jnp.sum(maps["layer1"] ** 2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    assert float(jnp.abs(grads["layer1_0"]["conv1"]["bn"]["scale"]).sum()) > 0
    assert "mean" not in grads["layer1_0"]["conv1"]["bn"]
