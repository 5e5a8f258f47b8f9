"""benchmarks/host_memory_bench.py: the default side's environment, rows and table, and a tiny run of the two
workers (the retained side takes no page faults per call, the default side many)."""

import json
import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import host_memory_bench  # noqa: E402


def test_side_environments_drop_the_malloc_variables_and_add_huge_pages_where_asked():
    environ = {"MALLOC_ARENA_MAX": "1", "MALLOC_TRIM_THRESHOLD_": "9", "GLIBC_TUNABLES": "glibc.malloc.x=1",
               "REMAP_JAX_RETAIN_MEMORY": "0", "PATH": "/bin", "XLA_FLAGS": "--x"}
    for side in ("default", "retained"):  # `retained` is applied by its worker, as the commands do
        assert host_memory_bench.side_environment(side, environ) == {"PATH": "/bin", "XLA_FLAGS": "--x"}
    for side in ("hugetlb", "retained+hugetlb"):
        assert host_memory_bench.side_environment(side, environ) == {
            "PATH": "/bin", "XLA_FLAGS": "--x", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_arguments_rows_and_table():
    assert host_memory_bench.parse_args([]).sides == ["default", "retained"]
    for bad in ("default", "default,default", "default,fast"):
        with pytest.raises(SystemExit):
            host_memory_bench.parse_args(["--sides", bad])
    sides = ["default", "retained"]
    times = {"retained": [0.5, 0.4, 0.6], "default": [0.6, 0.5, 0.9]}
    faults = {"retained": [0, 0, 3], "default": [80, 90, 85]}
    system = {"retained": [0.0, 0.01, 0.0], "default": [0.2, 0.2, 0.3]}
    row = host_memory_bench.summarise({"arch": "resnet50", "batch": 1}, sides, times, faults, system)
    assert row["retained_s"] == 0.5 and row["default_s"] == 0.6
    assert row["retained_ratio"] == pytest.approx(1.2) and row["default_ratio"] == 1.0
    assert (row["retained_faults"], row["default_faults"]) == (0, 85)
    setup = {"size": [768, 1024], "dtype": "float32", "repeats": 3, "machine": "x86_64 2 CPUs",
             "sides": sides, "load_before": 0.5, "load_after": 0.7, "jax": "0.10.2", "device": "cpu (cpu)"}
    table = host_memory_bench.format_table([row], setup)
    assert "| arch | batch | default | retained |" in table and "1024x768 (WxH)" in table
    assert "| resnet50 | 1 | 0.600 (1.00x; 85; 0.200) | 0.500 (1.20x; 0; 0.000) |" in table


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_tiny_run_of_both_workers(tmp_path):
    out = tmp_path / "hm.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "host_memory_bench.py"),
                           "--archs", "resnet18", "--size", "256x320", "--repeats", "3", "--warmup", "10",
                           "--pause-s", "0", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "| resnet18 | 1 |" in proc.stdout
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert report["setup"]["settings"]["arena_max"] == 1 and len(row["retained_times"]) == 3
    assert report["setup"]["sides"] == ["default", "retained"]
    # ResNet-18 at 256x320 allocates tens of MB per call: fresh pages on the default side only (the median
    # of three calls: now and then a retained call still grows the heap, when a freed buffer comes back late)
    assert row["default_faults"] > 2000 and row["retained_faults"] < row["default_faults"] / 10, row
