"""Writes tests/fixtures/torchvision_parity.npz: torchvision tap outputs for seeded weights.

The weights are not stored (ResNeXt-101 alone is 350 MB): every tensor is drawn from a fixed numpy seed by
`parity_weights`, a pure-numpy function that `tests/test_weights.py` imports from this file to regenerate the
same weights, write them to a checkpoint, and load them through `remap_jax.nn.backbones.load_pretrained`.
The fixture keeps, per architecture, the tap outputs (NHWC float32, computed by torch in float64) and the
torchvision state-dict key/shape listing (so the test also checks our key layout against torchvision's).

Run in a separate virtualenv with torch (never a library dependency):

    python -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy safetensors
    /tmp/torchenv/bin/python tools/make_parity_fixture.py            # writes tests/fixtures/...
"""

from __future__ import annotations

import zlib

import numpy as np

SEED = 20190601
INPUT_SHAPE = (1, 64, 96, 3)  # NHWC; non-square on purpose so H/W mix-ups show
# Taps per architecture: small maps only, the fixture must stay small. VGG friendly names resolve to
# torchvision indices: conv3_3 = features.15 (its ReLU), conv5_3 = features.29, pool5 = features.30.
FIXTURE_TAPS = {
    "resnet18": ("maxpool", "layer1.1", "layer3.1", "layer4.1"),
    "resnet50": ("maxpool", "layer2.3", "layer3.5", "layer4.1", "layer4.2"),
    "resnext101_32x8d": ("layer2", "layer3.22", "layer4.1", "layer4.2"),
    "resnext101_64x4d": ("layer3.22", "layer4.2"),
    "vgg16": ("conv3_3", "features.28", "conv5_3", "pool5"),
}
VGG16_NAMES = {"conv3_3": "features.15", "conv5_3": "features.29", "pool5": "features.30"}
IGNORED_PREFIXES = ("fc.", "classifier.")


def parity_weights(shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> dict[str, np.ndarray]:
    """Deterministic float32 weights in torchvision naming and layout, one RNG stream per key name.

    Conv kernels (4-D) are He-normal for their fan-in; BatchNorm weight/running_var are in [0.5, 1.5];
    biases and running_mean are N(0, 0.1^2). Per-key streams make the result independent of key order and of
    which other keys are present.
    """
    out = {}
    for key, shape in shapes.items():
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        if len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        elif key.endswith(("running_var", "weight")):
            value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            value = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        out[key] = value
    return out


def parity_input(seed: int = SEED, shape=INPUT_SHAPE) -> np.ndarray:
    """The NHWC float32 input image batch the fixture outputs were computed on."""
    return np.random.default_rng([seed, 1]).standard_normal(shape).astype(np.float32)


def compute_arch(arch: str, taps) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
    import torch
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None).eval()
    state = model.state_dict()
    shapes = {
        k: tuple(v.shape)
        for k, v in state.items()
        if not k.startswith(IGNORED_PREFIXES) and not k.endswith("num_batches_tracked")
    }
    weights = parity_weights(shapes)
    result = model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    missing = result.missing_keys
    ignorable = [k.startswith(IGNORED_PREFIXES) or k.endswith("num_batches_tracked") for k in missing]
    assert all(ignorable), result.missing_keys
    model = model.double()
    captured = {}
    for tap in taps:
        module = model.get_submodule(VGG16_NAMES.get(tap, tap) if arch == "vgg16" else tap)
        # clone: torchvision's in-place ReLUs would otherwise overwrite a conv output after the hook ran.
        module.register_forward_hook(lambda m, i, o, tap=tap: captured.__setitem__(tap, o.detach().clone()))
    x = torch.from_numpy(parity_input()).permute(0, 3, 1, 2).double()
    with torch.no_grad():
        model(x)
    outputs = {tap: captured[tap].permute(0, 2, 3, 1).float().numpy() for tap in taps}
    return outputs, {k: list(v) for k, v in shapes.items()}


def main(argv=None):
    from fixture_npz import fixture_parser, write_fixture_npz  # beside this script (on the path when it runs)

    parser = fixture_parser(__doc__, "torchvision_parity.npz")
    parser.add_argument("--archs", default=",".join(FIXTURE_TAPS))
    args = parser.parse_args(argv)

    import torch
    import torchvision

    torch.set_num_threads(2)
    arrays = {}
    meta = {"seed": SEED, "input_shape": list(INPUT_SHAPE), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "taps": {}, "keys": {}}
    for arch in args.archs.split(","):
        taps = FIXTURE_TAPS[arch]
        outputs, shapes = compute_arch(arch, taps)
        for tap, value in outputs.items():
            arrays[f"{arch}/{tap}"] = value
        meta["taps"][arch] = list(taps)
        meta["keys"][arch] = shapes
        print(arch, {t: v.shape for t, v in outputs.items()}, flush=True)
    write_fixture_npz(args.out, arrays, meta)


if __name__ == "__main__":
    main()
