"""The inputs of `benchmarks/compare_torch.py`: seeded random ResNet weights in torchvision naming (both sides
load them) and test images."""

from __future__ import annotations

import numpy as np


def random_torchvision_weights(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random float32 weights of `arch` in torchvision naming (classifier excluded).

    Conv weights are He-normal (fan-out); BatchNorm gets non-trivial statistics (scale, bias, running mean
    and variance) so that BN folding is exercised; the last BN of each residual branch is small (0.1 .. 0.3),
    which keeps the activations of a deep random ResNet in a moderate range.
    """
    from remap_jax.nn.backbones import arch_spec, torch_state_dict_shapes

    last_bn = ".bn3" if arch_spec(arch).block == "bottleneck" else ".bn2"
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in sorted(torch_state_dict_shapes(arch).items()):
        module, leaf = key.rsplit(".", 1)
        if len(shape) == 4:
            fan_out = shape[0] * shape[2] * shape[3]
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_out)
        elif leaf == "weight":
            branch_end = module.startswith("layer") and module.endswith(last_bn)
            value = rng.uniform(*((0.1, 0.3) if branch_end else (0.5, 1.0)), shape)
        elif leaf == "bias":
            value = rng.normal(0.0, 0.05, shape)
        elif leaf == "running_mean":
            value = rng.normal(0.0, 0.1, shape)
        elif leaf == "running_var":
            value = rng.uniform(0.5, 2.0, shape)
        else:
            raise ValueError(f"random_torchvision_weights: unexpected key {key!r} for {arch}")
        state[key] = np.ascontiguousarray(value, dtype=np.float32)
    return state


def test_images(batch: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(batch, H, W, 3) uint8: smooth random colour fields plus noise (less degenerate than pure noise)."""
    rng = np.random.default_rng(seed)
    h, w = size
    coarse = rng.uniform(0, 255, (batch, -(-h // 32), -(-w // 32), 3))
    smooth = np.repeat(np.repeat(coarse, 32, axis=1), 32, axis=2)[:, :h, :w]
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
