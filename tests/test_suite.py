"""benchmarks/suite.py: a --quick --tiny run writes valid outputs for every block; the budget machinery."""

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import suite  # noqa: E402
import suite_report  # noqa: E402
import suite_rows  # noqa: E402


def test_tiny_run_writes_every_block(tmp_path):
    """The whole suite on tiny shapes, in subprocesses, within its total budget: every block is in the JSON
    with rows or an error, rows carry their measurements, and the Markdown has a section per block."""
    out = tmp_path / "suite"
    budget = 50  # six blocks; a block that finishes early passes its time on
    start = time.time()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "suite.py"), "--out", str(out),
                           "--quick", "--tiny", "--timeout-s", str(budget)],
                          cwd=ROOT, capture_output=True, text=True, timeout=budget + 60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert time.time() - start < budget + 30  # blocks are killed at their budgets
    report = json.loads((out / "suite.json").read_text())
    assert list(report["blocks"]) == list(suite.BLOCKS)
    assert report["preset"] == "tiny"
    if report["device"]:  # the first block that started reports the device
        assert report["device"]["device_count"] >= 1 and report["device"]["jax"]
    if report["peaks"]:  # CPU peaks measured in the run (by the first block that got that far), used by all
        peaks = report["peaks"]
        assert peaks["float32_flops"] > 1e8 and peaks["bfloat16_flops"] > 1e8 and peaks["bytes_per_s"] > 1e8
        assert peaks["source"].startswith("measured")
    for name, block in report["blocks"].items():
        assert block["rows"] or block["error"], (name, block)
        assert block["status"] in ("ok", "ok (budget skipped some rows)", "partial", "error", "timeout")
        for row in block["rows"]:
            measured = [key for key, _, _ in suite_report.COLUMNS[name] if key in row]
            assert "error" in row or len(measured) >= 5, (name, row)
            if "error" in row:
                continue
            # the roofline next to every speed figure: measured time, bound, fraction reached
            assert row["measured_ms"] > 0, (name, row)
            xla_program = not (name == "input" and row["part"] == "host") and row.get("part") != "scoring"
            if xla_program:
                assert row["gflop"] >= 0 and row["gbytes"] > 0 and row["bound_ms"] > 0, (name, row)
                assert 0 < row["of_bound"] <= 1.5, (name, row)
                assert row["of_bound"] == pytest.approx(row["bound_ms"] / row["measured_ms"], rel=1e-6)
            else:  # decoding on the host, numpy scoring: no XLA program to bound
                assert row["bound_ms"] is None and row["of_bound"] is None, (name, row)
    rows = report["blocks"]["input"]["rows"]
    host = [r for r in rows if r.get("part") == "host" and "error" not in r]
    device = [r for r in rows if r.get("part") == "device" and "error" not in r]
    for r in host:
        assert r["images_per_s"] > 0 and r["workers"] >= 1 and isinstance(r["draft"], bool)
        if device:
            assert r["vs_device"] == pytest.approx(r["images_per_s"] / device[0]["images_per_s"], rel=1e-6)
    text = (out / "suite.md").read_text()
    for name in suite.BLOCKS:
        assert f"## {name}" in text
    assert "| block | status |" in text and "roofline peaks:" in text
    if any(block["rows"] for block in report["blocks"].values()):
        assert "| measured ms | bound ms | of bound |" in text


def test_roofline_peaks_table_cost_and_bound():
    import jax
    import jax.numpy as jnp
    import roofline

    assert roofline.table_peaks("NVIDIA H100 80GB HBM3")["bytes_per_s"] == 3.35e12
    assert roofline.table_peaks("NVIDIA H100 PCIe")["bytes_per_s"] == 2.0e12  # the longer key wins
    assert roofline.table_peaks("NVIDIA H200")["bytes_per_s"] == 4.8e12
    assert roofline.table_peaks("TPU v5 lite")["bfloat16_flops"] == 197e12
    assert roofline.table_peaks("TPU v6 lite")["bfloat16_flops"] == 918e12
    assert roofline.table_peaks("Tesla T4") is None
    n = 64
    cost = roofline.cost(jax.jit(lambda a, b: a @ b), *[jax.ShapeDtypeStruct((n, n), jnp.float32)] * 2)
    assert cost["flops"] == pytest.approx(2 * n**3, rel=0.05)
    assert cost["bytes"] >= 3 * n * n * 4  # two operands read, the product written
    peaks = {"float32_flops": 1e9, "bfloat16_flops": 2e9, "bytes_per_s": 1e6}
    assert roofline.bound_seconds(cost, peaks) == pytest.approx(cost["bytes"] / 1e6)  # memory-bound here
    compute = {"flops": 4e9, "bytes": 1.0}
    assert roofline.bound_seconds(compute, peaks, "bfloat16") == pytest.approx(2.0)
    row = roofline.fields(compute, peaks, "float32", 8.0)
    assert row["bound_ms"] == pytest.approx(4000.0) and row["of_bound"] == pytest.approx(0.5)
    assert row["measured_ms"] == pytest.approx(8000.0) and row["gflop"] == pytest.approx(4.0)
    none = roofline.fields(None, peaks, "float32", 1.0)
    assert none["bound_ms"] is None and none["of_bound"] is None and none["measured_ms"] == 1000.0
    assert roofline.fields(compute, None, "float32", 1.0)["of_bound"] is None  # no peaks: no bound


def test_budget_shares_pass_unused_time_on():
    blocks = list(suite.BLOCKS)
    first = suite.budgets_left(blocks, 100.0, {})
    assert first == pytest.approx(100.0 * suite.WEIGHTS[blocks[0]] / sum(suite.WEIGHTS.values()))
    # a fixed budget is kept and taken out of what the others share
    assert suite.budgets_left(blocks, 100.0, {blocks[0]: 30.0}) == 30.0
    second = suite.budgets_left(blocks[1:], 1000.0, {blocks[2]: 400.0})
    flexible = [b for b in blocks[1:] if b != blocks[2]]
    assert second == pytest.approx(600.0 * suite.WEIGHTS[blocks[1]] / sum(suite.WEIGHTS[b] for b in flexible))
    assert suite.budgets_left(blocks[-1:], 50.0, {}) == pytest.approx(50.0)  # the last block gets the rest


def test_row_writer_skips_what_does_not_fit_and_records_errors(tmp_path):
    path = tmp_path / "block.jsonl"
    writer = suite_rows.RowWriter(str(path), deadline=time.time() + 0.5)
    assert writer.timed("a", {"arch": "x", "batch": 1}, lambda: (time.sleep(0.6), {"images_per_s": 2.0})[1])
    # same kind predicted to take 0.6 s, past the deadline: skipped and listed
    assert writer.timed("a", {"arch": "x", "batch": 2}, lambda: {"images_per_s": 1.0}) is None
    writer.deadline = time.time() + 60
    failed = writer.timed("b", {"arch": "y", "batch": 1}, lambda: 1 / 0)
    assert failed["error"].startswith("ZeroDivisionError")
    path.write_text(path.read_text() + '{"row": {"arch": "cut sh')  # a line cut short by a kill
    block = suite_rows.read_block(str(path))
    assert [(r["arch"], r["batch"]) for r in block["rows"]] == [("x", 1), ("y", 1)]
    assert block["skipped"][0]["batch"] == 2 and "predicted" in block["skipped"][0]["reason"]
    assert not block["done"]


def test_markdown_shows_errors_and_skipped_rows():
    block = {"status": "timeout", "seconds": 12.0, "budget_s": 10.0, "error": "killed at its budget of 10 s",
             "rows": [{"arch": "resnet50", "dtype": "float32", "batch": 1, "images_per_s": 1.5}],
             "skipped": [{"arch": "resnet101", "dtype": "float32", "batch": 1, "reason": "predicted"}]}
    report = {"device": {}, "preset": "tiny", "timeout_s": 10.0, "total_s": 12.0,
              "blocks": {"extract": block}}
    text = suite_report.markdown(report)
    assert "killed at its budget" in text and "| resnet50 | float32 | 1 |" in text
    assert "arch=resnet101" in text


def test_unknown_block_and_bad_budget_are_refused():
    with pytest.raises(SystemExit):
        suite.parse_args(["--out", "x", "--blocks", "extract,nope"])
    with pytest.raises(SystemExit):
        suite.parse_budgets(["extract:10"])
