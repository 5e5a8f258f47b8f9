"""Cross-platform lowering, checked on a CPU machine: programs exported for cuda and tpu (jax lowers for
them without the hardware; nothing is compiled) hold the accelerator kernels, and the CPU ones the CPU
kernels, with nothing of one leaking into the other.

Depthwise convolutions and the ROI cell pass are chosen per lowering platform (`lax.platform_dependent`):
on GPU/TPU a grouped convolution (feature_group_count > 1) and the gather lowering; on CPU shifted slices
(`_depthwise_by_shifts`) and the slice/int16-key lowering. Tiny inputs, random weights.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from remap_jax.describe import lowerings
from remap_jax.model import RetrievalModel, build_head, init_variables
from remap_jax.nn import backbones
from remap_jax.nn.regions import rmac_regions
from remap_jax.nn.roi_pool import roi_max_pool
from remap_jax.search import exact
from train import step as train_step

ACCELERATORS = ("cuda", "tpu")
CPU_ONLY = set(lowerings.CPU_LOWERINGS)
GATHER_POOL = set(lowerings.ACCELERATOR_LOWERINGS)
# arch, input size, taps, depthwise convolutions up to the deepest tap
FAMILIES = [
    ("resnet18", (64, 64), None, 0),
    ("vgg16", (64, 64), None, 0),
    ("efficientnet_lite0", (64, 96), ("blocks.15", "head"), 16),
]


def _model(arch, taps, dtype):
    taps = tuple(taps or backbones.default_taps(arch))
    mean, std = backbones.input_normalization(arch)
    return RetrievalModel(backbone=backbones.create_backbone(arch, dtype=dtype, fold_bn=True),
                          head=build_head("remap", taps, levels=2, overlap=0.4, include_global=False,
                                          p_init=3.0, whiten=False),
                          taps=taps, pixel_mean=tuple(map(float, mean)), pixel_std=tuple(map(float, std)))


def _specs(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def _module(fn, platforms, *args):
    return jax.export.export(jax.jit(fn), platforms=platforms)(*args).mlir_module()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("arch,size,taps,depthwise", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_extractor_lowers_per_platform(arch, size, taps, depthwise, dtype):
    model = _model(arch, taps, dtype)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *size, 3), jnp.uint8))
    images = jax.ShapeDtypeStruct((2, *size, 3), jnp.uint8)
    describe = lambda v, x: model.apply(v, x)  # noqa: E731
    cpu = _module(describe, ("cpu",), variables, images)
    cpu_ops = lowerings.op_inventory(cpu)
    assert cpu_ops["grouped_conv"] == 0
    assert not lowerings.lowerings_in(cpu) & GATHER_POOL
    assert "_pool_on_cpu" in lowerings.lowerings_in(cpu)
    assert ("_depthwise_by_shifts" in lowerings.lowerings_in(cpu)) == (depthwise > 0)
    for platform in ACCELERATORS:
        text = _module(describe, (platform,), variables, images)
        ops = lowerings.op_inventory(text)
        assert ops["grouped_conv"] == depthwise, platform
        assert ops["conv"] == cpu_ops["conv"] + depthwise  # the CPU's shifted depthwise become convolutions
        assert lowerings.lowerings_in(text) == GATHER_POOL, platform  # nothing CPU-only leaks in
        assert ops["gather"] == cpu_ops["gather"] + len(model.taps)  # one gather cell pass per tap
        assert ops["slice"] < cpu_ops["slice"]
        assert "i16" not in text  # the CPU's int16 order keys of 16-bit maps


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_roi_pool_lowers_per_platform_and_a_multi_platform_export_runs_the_cpu_part(dtype):
    regions = rmac_regions(8, 12)
    pool = lambda x: roi_max_pool(x, regions)  # noqa: E731
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 12, 16)), dtype)
    cpu = _module(pool, ("cpu",), _specs(x))
    assert lowerings.lowerings_in(cpu) & CPU_ONLY and not lowerings.lowerings_in(cpu) & GATHER_POOL
    assert ("i16" in cpu) == (dtype == jnp.bfloat16)
    for platform in ACCELERATORS:
        text = _module(pool, (platform,), _specs(x))
        assert lowerings.lowerings_in(text) == GATHER_POOL
        assert "i16" not in text
    multi = jax.export.export(jax.jit(pool), platforms=("cpu", "cuda", "tpu"))(_specs(x))
    assert lowerings.lowerings_in(multi.mlir_module()) == lowerings.lowerings_in(cpu) | GATHER_POOL
    np.testing.assert_array_equal(np.asarray(multi.call(x), np.float32),
                                  np.asarray(jax.jit(pool)(x), np.float32))


def test_multi_platform_extractor_export_gives_the_jit_programs_numbers():
    model = _model("efficientnet_lite0", ("blocks.4",), jnp.float32)
    variables = init_variables(model, jax.random.key(0), (1, 32, 48, 3))
    images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 32, 48, 3), np.uint8))
    describe = lambda v, x: model.apply(v, x)  # noqa: E731
    multi = jax.export.export(jax.jit(describe), platforms=("cpu", "cuda", "tpu"))(_specs(variables),
                                                                                 _specs(images))
    ops = lowerings.op_inventory(multi.mlir_module())
    assert ops["grouped_conv"] > 0 and "_depthwise_by_shifts" in lowerings.lowerings_in(multi.mlir_module())
    np.testing.assert_allclose(multi.call(variables, images), jax.jit(describe)(variables, images),
                               rtol=0, atol=1e-6)


def test_train_step_over_a_mesh_lowers_for_accelerators():
    """The data-parallel step (forward and backward through depthwise convolutions and ROI pooling)."""
    model = _model("efficientnet_lite0", ("blocks.2",), jnp.float32)
    variables = init_variables(model, jax.random.key(0), (1, 32, 32, 3))
    tx = optax.sgd(0.1)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    state = jax.device_put(train_step.create_train_state(variables, tx), NamedSharding(mesh, P()))
    step = train_step.make_train_step(model, tx, loss="triplet", margin=0.5, mesh=mesh)
    n = len(jax.devices())
    images = jax.ShapeDtypeStruct((n, 3, 32, 32, 3), jnp.uint8, sharding=NamedSharding(mesh, P("data")))
    weights = jax.ShapeDtypeStruct((n,), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    depthwise_in_taps = 2  # blocks.0 .. blocks.2: one depthwise convolution each, block 0 included
    for platform in ACCELERATORS:
        exported = jax.export.export(step, platforms=(platform,))(_specs(state), images, weights)
        text = exported.mlir_module()
        ops = lowerings.op_inventory(text)
        assert exported.nr_devices == n
        # forward, and the backward's input and kernel gradients, as grouped convolutions
        assert ops["grouped_conv"] >= depthwise_in_taps + 1
        assert lowerings.lowerings_in(text) == GATHER_POOL
    cpu = jax.export.export(step, platforms=("cpu",))(_specs(state), images, weights).mlir_module()
    assert lowerings.op_inventory(cpu)["grouped_conv"] == 0
    found = lowerings.lowerings_in(cpu)
    assert "_depthwise_by_shifts" in found and not found & GATHER_POOL


def test_exact_search_lowers_for_accelerators_in_float32():
    step = exact._exact_step_fn(5)
    args = [jax.ShapeDtypeStruct(s, d) for s, d in (((4, 5), jnp.float32), ((4, 5), jnp.int32),
                                                    ((4, 16), jnp.float32), ((64, 16), jnp.float32),
                                                    ((), jnp.int32), ((), jnp.int32))]
    for platform in ("cpu", *ACCELERATORS):
        text = jax.export.export(step, platforms=(platform,))(*args).mlir_module()
        assert "precision = [HIGHEST, HIGHEST]" in text, platform  # float32 scores on GPU/TPU too
        assert "chlo.top_k" in text
        assert "custom_call" not in text  # no CPU library call (LAPACK, ducc)
