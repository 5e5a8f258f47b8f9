"""CNN backbones with layer access (taps) and pretrained-weight import from torchvision / timm checkpoints.

    backbone = create_backbone("resnet50")
    variables = load_pretrained("resnet50", "resnet50.safetensors")   # or init_backbone(...)
    maps = backbone.apply(variables, images, taps=("layer4.1", "layer4.2"))  # {tap: (B, h, w, C)}

Images are (B, H, W, 3) float RGB, normalised as the imported weights expect: `(pixels / 255 - mean) / std`
with `mean, std = input_normalization(arch)` (ImageNet mean/std for the torchvision architectures).
BatchNorm is frozen: running statistics live in the `batch_stats` collection and are never updated.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from remap_jax.nn.backbones.efficientnet_lite import (
    LITE_COEFFICIENTS,
    LITE_INPUT_MEAN,
    LITE_INPUT_STD,
    EfficientNetLite,
    efficientnet_lite_default_taps,
    efficientnet_lite_tap_names,
)
from remap_jax.nn.backbones.resnet import ResNet, resnet_tap_names
from remap_jax.nn.backbones.vgg import VGG, vgg_tap_names

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture. `kind` is "resnet", "vgg" or "efficientnet_lite".

    `width`/`depth` are EfficientNet's scaling coefficients. `input_mean`/`input_std` (RGB, for pixels
    scaled to [0, 1]) are the normalisation the imported weights were trained with.
    """

    kind: str
    block: str = "bottleneck"
    stage_sizes: tuple[int, ...] = ()
    groups: int = 1
    width_per_group: int = 64
    width: float = 1.0
    depth: float = 1.0
    input_mean: tuple[float, float, float] = IMAGENET_MEAN
    input_std: tuple[float, float, float] = IMAGENET_STD


ARCHS: dict[str, ArchSpec] = {
    "resnet18": ArchSpec("resnet", "basic", (2, 2, 2, 2)),
    "resnet34": ArchSpec("resnet", "basic", (3, 4, 6, 3)),
    "resnet50": ArchSpec("resnet", "bottleneck", (3, 4, 6, 3)),
    "resnet101": ArchSpec("resnet", "bottleneck", (3, 4, 23, 3)),
    "resnet152": ArchSpec("resnet", "bottleneck", (3, 8, 36, 3)),
    "resnext101_32x8d": ArchSpec("resnet", "bottleneck", (3, 4, 23, 3), groups=32, width_per_group=8),
    "resnext101_64x4d": ArchSpec("resnet", "bottleneck", (3, 4, 23, 3), groups=64, width_per_group=4),
    "vgg16": ArchSpec("vgg"),
    **{
        arch: ArchSpec(
            "efficientnet_lite", width=w, depth=d, input_mean=LITE_INPUT_MEAN, input_std=LITE_INPUT_STD
        )
        for arch, (w, d) in LITE_COEFFICIENTS.items()
    },
}


def arch_spec(arch: str) -> ArchSpec:
    if arch not in ARCHS:
        raise ValueError(f"arch: unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    return ARCHS[arch]


def create_backbone(arch: str, dtype: Any = jnp.float32, fold_bn: bool = False) -> nn.Module:
    """The Flax module for `arch`. `dtype` is the compute dtype (float32 or bfloat16); params stay float32.

    `fold_bn=True` folds the frozen BatchNorm into the convolutions at call time (same variables, faster).
    """
    spec = arch_spec(arch)
    if spec.kind == "vgg":
        return VGG(fold_bn=fold_bn, dtype=dtype)
    if spec.kind == "efficientnet_lite":
        return EfficientNetLite(spec.width, spec.depth, fold_bn=fold_bn, dtype=dtype)
    return ResNet(
        spec.block, spec.stage_sizes, spec.groups, spec.width_per_group, fold_bn=fold_bn, dtype=dtype
    )


def valid_taps(arch: str) -> tuple[str, ...]:
    """Every tap name of `arch`, in computation order."""
    spec = arch_spec(arch)
    if spec.kind == "efficientnet_lite":
        return efficientnet_lite_tap_names(spec.width, spec.depth)
    return vgg_tap_names() if spec.kind == "vgg" else resnet_tap_names(spec.stage_sizes)


def default_taps(arch: str) -> tuple[str, ...]:
    """The two deepest blocks (REMAP's "layer 1+2"): `layer4.{n-2}`, `layer4.{n-1}`; VGG16: conv5_2/3;
    EfficientNet-Lite: see `efficientnet_lite_default_taps`."""
    spec = arch_spec(arch)
    if spec.kind == "vgg":
        return ("conv5_2", "conv5_3")
    if spec.kind == "efficientnet_lite":
        return efficientnet_lite_default_taps(spec.width, spec.depth)
    n = spec.stage_sizes[-1]
    return (f"layer4.{n - 2}", f"layer4.{n - 1}")


def deepest_tap(arch: str) -> str:
    """The last tap; applying with it creates/uses every parameter of the backbone."""
    return {"resnet": "layer4", "vgg": "pool5", "efficientnet_lite": "head"}[arch_spec(arch).kind]


def input_normalization(arch: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of `arch`'s weights, float32 arrays of 3 (RGB) for images in [0, 1]: `(x - mean) / std`."""
    spec = arch_spec(arch)
    return np.asarray(spec.input_mean, np.float32), np.asarray(spec.input_std, np.float32)


def init_backbone(arch: str, key: jax.Array, input_shape=(1, 224, 224, 3)) -> dict:
    """Randomly initialised variables {"params": ..., "batch_stats": ...}, all float32.

    Conv kernels are He-normal (fan-out, torchvision's choice), biases zero, BatchNorm the identity
    (scale 1, bias 0, mean 0, var 1). Drawn from one `jax.random.normal` call split into the leaves, which is
    much cheaper to compile than tracing the network's initialiser. Parameter shapes do not depend on
    `input_shape` (checked for rank and channels only).
    """
    if len(input_shape) != 4 or input_shape[-1] != 3:
        raise ValueError(f"input_shape: expected (B, H, W, 3), got {tuple(input_shape)}")
    return init_like(variable_shapes(arch), key)


def init_like(shapes, key: jax.Array) -> dict:
    """Backbone-style random variables for a shape tree (e.g. `jax.eval_shape` of a module's init).

    Leaves named `kernel` (HWIO conv kernels) get He-normal (fan-out) values, `scale`/`var` ones, every other
    leaf zeros. One `jax.random.normal` draw is split into the kernels.
    """
    leaves, treedef = jax.tree.flatten_with_path(shapes)
    kernels = [leaf for path, leaf in leaves if path[-1].key == "kernel"]
    total = sum(int(np.prod(leaf.shape)) for leaf in kernels)
    noise = np.asarray(jax.random.normal(key, (total,), jnp.float32))
    values, offset = [], 0
    for path, leaf in leaves:
        name = path[-1].key
        if name == "kernel":
            size = int(np.prod(leaf.shape))
            fan_out = int(np.prod(leaf.shape[:-2])) * leaf.shape[-1]
            std = np.float32(np.sqrt(2.0 / fan_out))
            values.append(noise[offset : offset + size].reshape(leaf.shape) * std)
            offset += size
        elif name in ("scale", "var"):
            values.append(np.ones(leaf.shape, np.float32))
        else:
            values.append(np.zeros(leaf.shape, np.float32))
    variables = jax.tree.unflatten(treedef, [jnp.asarray(v) for v in values])
    return {k: dict(v) for k, v in variables.items()}


@functools.cache
def variable_shapes(arch: str) -> dict:
    """Shape tree (jax.ShapeDtypeStruct leaves) of `arch`'s variables, computed without allocating them."""
    module = create_backbone(arch)
    init = functools.partial(module.init, taps=(deepest_tap(arch),))
    shapes = jax.eval_shape(init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    return dict(shapes)


from remap_jax.nn.backbones.weights import (  # noqa: E402  (weights needs the helpers above)
    WeightImportError,
    from_torch_state_dict,
    load_pretrained,
    pretrained_path,
    read_state_dict,
    to_torch_state_dict,
    torch_state_dict_shapes,
)

__all__ = [
    "ARCHS",
    "ArchSpec",
    "EfficientNetLite",
    "VGG",
    "ResNet",
    "WeightImportError",
    "arch_spec",
    "create_backbone",
    "default_taps",
    "deepest_tap",
    "from_torch_state_dict",
    "init_backbone",
    "init_like",
    "input_normalization",
    "load_pretrained",
    "pretrained_path",
    "read_state_dict",
    "to_torch_state_dict",
    "torch_state_dict_shapes",
    "valid_taps",
    "variable_shapes",
]
