"""benchmarks/compare_torch.py without torch: arguments, the alternating schedule, ratios, the weights both
sides load, the torch worker's region grid (the worker imports torch only when it runs; this venv has none),
and the jax side on a tiny size."""

import argparse
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import _torch_worker  # noqa: E402
import compare_torch  # noqa: E402
import compare_torch_data  # noqa: E402
import compare_torch_sides  # noqa: E402

from remap_jax.nn.backbones import load_pretrained  # noqa: E402
from remap_jax.nn.regions import rmac_regions  # noqa: E402
from remap_jax.runtime import host_memory  # noqa: E402


def test_arguments():
    args = compare_torch.parse_args(["--torch-python", "/venv/bin/python"])
    assert (args.arch, args.size, args.batch_sizes, args.threads, args.dtype, args.device) == (
        "resnet50", (768, 1024), [1], 2, "float32", "cpu")
    args = compare_torch.parse_args(["--no-torch", "--size", "480x640", "--batch-sizes", "1,8", "--dtype",
                                     "bfloat16", "--repeats", "3"])
    assert args.size == (480, 640) and args.batch_sizes == [1, 8] and args.repeats == 3
    for bad in (["--size", "768"], ["--size", "16x16"], ["--batch-sizes", "1,0"], ["--threads", "0"]):
        with pytest.raises(SystemExit):
            compare_torch.parse_args(["--no-torch", *bad])
    with pytest.raises(SystemExit):  # the torch side needs its python
        compare_torch.parse_args([])
    with pytest.raises(argparse.ArgumentTypeError, match="HEIGHTxWIDTH"):
        compare_torch.parse_size("768 by 1024")


def test_malloc_settings_reach_the_torch_worker_only_when_both_sides_get_them(monkeypatch):
    for variable in [v for _, v, _ in host_memory.SETTINGS.values()] + [host_memory.SWITCH, "GLIBC_TUNABLES"]:
        monkeypatch.delenv(variable, raising=False)
    python = ["--torch-python", "/venv/bin/python"]
    assert compare_torch.parse_args(python).retain_memory == "both"
    env = compare_torch_sides.worker_env(compare_torch.parse_args(python))
    assert env["MALLOC_ARENA_MAX"] == "1" and env["OMP_NUM_THREADS"] == "2"
    for choice in ("jax", "none"):
        env = compare_torch_sides.worker_env(compare_torch.parse_args([*python, "--retain-memory", choice]))
        assert not any(k.startswith("MALLOC_") for k in env) and env["OMP_NUM_THREADS"] == "2"
    with pytest.raises(SystemExit):
        compare_torch.parse_args([*python, "--retain-memory", "torch"])


def test_alternating_schedule_and_ratio():
    assert compare_torch.alternating_schedule(3) == ["jax", "torch"] * 3
    assert compare_torch.alternating_schedule(2, ("jax",)) == ["jax", "jax"]
    row = compare_torch.summarise(8, [2.0, 1.0, 9.0], [3.0, 2.5, 4.0])
    assert row["jax_s"] == 2.0 and row["torch_s"] == 3.0  # medians: one slow call does not count
    assert row["ratio"] == pytest.approx(1.5) and row["jax_s_per_img"] == pytest.approx(0.25)
    assert "ratio" not in compare_torch.summarise(1, [1.0])


def test_relative_error():
    a = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    b = np.array([[1.0, 0.0], [0.0, 1.001]], np.float32)
    assert compare_torch.relative_error(a, a) == 0.0
    assert compare_torch.relative_error(b, a) == pytest.approx(1e-3, rel=1e-3)
    with pytest.raises(ValueError, match="shapes differ"):
        compare_torch.relative_error(a, a[:1])


def test_worker_region_grid_is_remap_jax_grid():
    """The torch side pools the same regions, in the same order, for every map shape (portrait included)."""
    for h in range(1, 30):
        for w in range(1, 30):
            for levels in (1, 3, 4):
                for include_global in (False, True):
                    expected = [tuple(r) for r in rmac_regions(h, w, levels, 0.4, include_global).tolist()]
                    assert _torch_worker.cirtorch_region_grid(h, w, levels, 0.4, include_global) == expected


def test_random_weights_load_into_remap_jax(tmp_path):
    from safetensors.numpy import save_file

    state = compare_torch_data.random_torchvision_weights("resnet50", seed=3)
    assert not any(k.startswith("fc.") for k in state)
    assert state["layer1.0.bn3.weight"].max() <= 0.3 and state["layer1.0.bn1.weight"].min() >= 0.5
    assert np.all(state["bn1.running_var"] >= 0.5) and np.any(state["bn1.running_mean"] != 0)
    path = str(tmp_path / "w.safetensors")
    save_file(state, path)
    variables = load_pretrained("resnet50", path)
    kernel = variables["params"]["layer1_0"]["conv2"]["conv"]["kernel"]
    np.testing.assert_array_equal(kernel, state["layer1.0.conv2.weight"].transpose(2, 3, 1, 0))
    again = compare_torch_data.random_torchvision_weights("resnet50", seed=3)
    assert all(np.array_equal(again[k], v) for k, v in state.items())


def test_jax_side_on_a_tiny_size(tmp_path):
    """The --no-torch path end to end on ResNet-18 at 64x96: timings, unit descriptors, the breakdown."""
    from safetensors.numpy import save_file

    path = str(tmp_path / "r18.safetensors")
    save_file(compare_torch_data.random_torchvision_weights("resnet18"), path)
    side = compare_torch_sides.JaxSide("resnet18", path, (64, 96), levels=3, include_global=False,
                                       dtype="float32")
    args = compare_torch.parse_args(["--no-torch", "--size", "64x96", "--repeats", "2", "--warmup", "1",
                                     "--pause-s", "0", "--breakdown"])
    images = compare_torch_data.test_images(2, (64, 96))
    assert images.shape == (2, 64, 96, 3) and images.dtype == np.uint8
    row = compare_torch.compare_batch(side, None, images, args, str(tmp_path))
    assert row["batch"] == 2 and len(row["jax_times"]) == 2 and row["dim"] == 512 and "ratio" not in row
    parts = row["jax_breakdown_s"]
    assert {"transfer", "normalise", "backbone", "head", "whole"} <= set(parts)
    assert parts["backbone_gflop"] > 0.1  # ResNet-18 at 64x96: about 0.2 GFLOP per image
    desc = side.describe()
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, rtol=1e-5)
    setup = {"arch": "resnet18", "size": [64, 96], "dtype": "float32", "device": "cpu", "threads": 2,
             "levels": 3, "repeats": 2, "machine": "test", "load_before": 0.0, "load_after": 0.0, "jax": "x"}
    table = compare_torch.format_table([row], setup)
    assert "| 2 |" in table and "remap-jax parts" in table


def test_thread_env_pins_threads_and_jax_devices(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_foo=1")
    env = compare_torch_sides.thread_env(2, jax_cpu_devices=2)
    assert env["XLA_FLAGS"].split() == ["--xla_foo=1", "--xla_force_host_platform_device_count=2"]
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    one = compare_torch_sides.thread_env(1)["XLA_FLAGS"].split()
    assert one == ["--xla_foo=1", "--xla_cpu_multi_thread_eigen=false"]
