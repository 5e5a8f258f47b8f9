"""remap-extract output of fixed models is pinned: descriptors must not change when the code is reorganised.

`tests/fixtures/extract_golden.npz` holds the descriptors the extraction command produced for five images
(landscape, portrait, square, wide) and three fixed models: a seeded random ResNet-18 off the shelf,
multi-scale R-MAC, and an export with learned region weights and whitening read through `--checkpoint`.
Regenerate it only after an intended change of the numbers: `python tools/make_extract_golden.py`.

The fixture is a file written on one machine, so the comparison allows what another CPU model changes and
nothing more: XLA:CPU's kernels round differently on another processor even with the same vector
extensions. Measured against the fixture (written on an Intel Xeon with AVX-512 and AMX): an AMD EPYC
(AVX-512, no AMX) differs by up to 1.2e-7, and XLA capped at AVX2 or AVX on it
(`XLA_FLAGS=--xla_cpu_max_isa=...`, honoured: each cap gives other numbers) by up to 1.5e-7, absolute on
unit rows (1.2e-3 relative on components near 1e-4). The test allows 1e-6 absolute and asks for the same
ranking of the images against each other. Bit-identity stays where both sides run on one machine
(tests/test_extract.py: batching and order, describe_batch against the pipeline; resume and sharding).
"""

import os
import warnings

import jax
import numpy as np
import pytest

from remap_jax.cli.extract import main
from remap_jax.model import save_exported

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "extract_golden.npz")
SHAPES = [(64, 96), (96, 64), (80, 80), (50, 120), (70, 100)]  # landscape, portrait, square, wide, odd


def _images() -> list[np.ndarray]:
    from remap_jax.data.images import resize_to

    rng = np.random.default_rng(1234)
    out = []
    for h, w in SHAPES:
        small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
        out.append(resize_to(small, (h, w)))
    return out


def _export(path: str) -> None:
    """A REMAP export with non-trivial region weights and whitening, from seeded numpy values."""
    from remap_jax.nn.backbones import init_backbone

    backbone = init_backbone("resnet18", jax.random.PRNGKey(0), (1, 64, 96, 3))
    rng = np.random.default_rng(7)
    head = {
        "stream_layer4_0": {"alpha": rng.uniform(0.2, 2.0, 8).astype(np.float32)},
        "stream_layer4_1": {"alpha": rng.uniform(0.2, 2.0, 8).astype(np.float32)},
        "whiten": {"kernel": (np.eye(1024) + 0.05 * rng.normal(size=(1024, 1024))).astype(np.float32),
                   "bias": (0.01 * rng.normal(size=1024)).astype(np.float32)},
    }
    variables = {"params": {"backbone": backbone["params"], "head": head},
                 "batch_stats": {"backbone": backbone["batch_stats"]}}
    config = {"arch": "resnet18", "taps": ["layer4.0", "layer4.1"], "head": "remap", "levels": 2,
              "whiten": True, "image_size": [64, 96], "scales": [1.0]}
    save_exported(path, config, variables)


CASES = {
    "pretrained": ["--arch", "resnet18", "--levels", "2", "--image-size", "64,96"],
    "multiscale": ["--arch", "resnet18", "--levels", "2", "--image-size", "64,96", "--scales", "1,1.25",
                   "--scale-weights", "1,0.5", "--head", "rmac"],
    "checkpoint": ["--checkpoint", "{export}"],
}


def _run_case(tmp_path, name: str) -> dict:
    from PIL import Image

    folder = tmp_path / "images"
    if not folder.exists():
        folder.mkdir()
        for i, img in enumerate(_images()):
            Image.fromarray(img).save(folder / f"img{i}.png")
    export = tmp_path / "export"
    if name == "checkpoint" and not export.exists():
        _export(str(export))
    out = tmp_path / f"{name}.npz"
    args = [a.format(export=export) for a in CASES[name]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone warning
        assert main([*args, "--images", str(folder), "--out", str(out), "--batch-size", "2", "--quiet"]) == 0
    with np.load(out) as f:
        return {"descriptors": f["descriptors"], "ids": f["ids"]}


# Largest difference a CPU model may make on a unit-norm descriptor component (measured: 1.5e-7; see above).
CROSS_CPU_ATOL = 1e-6


def write_fixture(tmp_path) -> None:
    arrays = {}
    for name in CASES:
        got = _run_case(tmp_path, name)
        arrays[f"{name}/descriptors"], arrays[f"{name}/ids"] = got["descriptors"], got["ids"]
    np.savez(FIXTURE, **arrays)


@pytest.mark.parametrize("name", list(CASES))
def test_extract_descriptors_match_the_golden_fixture(tmp_path, name):
    got = _run_case(tmp_path, name)
    with np.load(FIXTURE) as f:
        want, ids = f[f"{name}/descriptors"], f[f"{name}/ids"]
    np.testing.assert_array_equal(got["ids"], ids)
    assert got["descriptors"].dtype == np.float32 and got["descriptors"].shape == want.shape
    np.testing.assert_allclose(got["descriptors"], want, rtol=0, atol=CROSS_CPU_ATOL)
    # Each image as a query against the others: the same order as the fixture's.
    def order(x):
        return np.argsort(-(x @ x.T), axis=1, kind="stable")

    np.testing.assert_array_equal(order(got["descriptors"]), order(want))
