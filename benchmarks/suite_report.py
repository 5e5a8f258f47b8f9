"""The benchmark suite's Markdown (`suite.md`): the device and peaks, a status line per block, then a table
per block with the columns of `COLUMNS` (row key, header, format) and the roofline columns."""

from __future__ import annotations

import rerank_bench  # numpy only at import

ROOFLINE_COLUMNS = [("measured_ms", "measured ms", "{:.3f}"), ("bound_ms", "bound ms", "{:.3f}"),
                    ("of_bound", "of bound", "{:.1%}"), ("gflop", "GFLOP", "{:.3g}"),
                    ("gbytes", "GB", "{:.3g}")]

COLUMNS = {
    "roi_pool": [("shape", "shape", "{}"), ("BxHxWxC", "B x H x W x C", "{}"), ("dtype", "dtype", "{}"),
                 ("method", "lowering", "{}"), ("R", "R", "{}"),
                 ("roi_max_pool_ms", "roi_max_pool ms", "{:.3f}"),
                 ("naive_ms", "naive loop ms", "{:.3f}"), ("full_max_ms", "full-map max ms", "{:.3f}"),
                 ("speedup_vs_naive", "vs naive", "{:.1f}x"), ("ratio_to_floor", "x floor", "{:.2f}x"),
                 ("roi_GBps", "GB/s", "{:.1f}")] + ROOFLINE_COLUMNS,
    "extract": [("arch", "arch", "{}"), ("dtype", "dtype", "{}"), ("batch", "batch", "{}"),
                ("size", "H x W", "{}"), ("images_per_s", "images/s", "{:.2f}"),
                ("s_per_batch", "s/batch", "{:.4f}"), ("head_share", "head share", "{:.1%}"),
                ("vs_float32", "vs float32", "{:.2f}x"), ("first_call_s", "first call s", "{:.1f}"),
                ("weights", "weights", "{}")] + ROOFLINE_COLUMNS,
    "input": [("part", "part", "{}"), ("arch", "arch", "{}"), ("dtype", "dtype", "{}"),
              ("batch", "batch", "{}"), ("size", "H x W", "{}"), ("source", "source JPEGs", "{}"),
              ("workers", "threads", "{}"), ("draft", "draft", "{}"), ("images_per_s", "images/s", "{:.1f}"),
              ("vs_device", "vs device", "{:.2f}x")] + ROOFLINE_COLUMNS,
    "train_step": [("arch", "arch", "{}"), ("size", "H x W", "{}"), ("tuples", "tuples", "{}"),
                   ("images", "images", "{}"), ("dtype", "dtype", "{}"), ("devices", "devices", "{}"),
                   ("ms_per_step", "ms/step", "{:.1f}"), ("images_per_s", "images/s", "{:.1f}"),
                   ("vs_float32_1_device", "vs f32 x1", "{:.2f}x"), ("compile_s", "compile s", "{:.1f}")]
    + ROOFLINE_COLUMNS,
    "exact_search": [("num_db", "database", "{:,}"), ("dim", "D", "{}"), ("queries", "queries", "{}"),
                     ("k", "k", "{}"), ("jax_s", "exact_search s", "{:.3f}"),
                     ("numpy_s", "numpy s", "{:.3f}"),
                     ("queries_per_s", "queries/s", "{:.0f}"), ("speedup", "vs numpy", "{:.1f}x"),
                     ("identical_fraction", "identical order", "{:.3f}"), ("recall", "same top-k", "{:.4f}")]
    + ROOFLINE_COLUMNS,
    "ranking": [("part", "part", "{}"), ("num_db", "database", "{:,}"), ("queries", "queries", "{}"),
                ("jax_full_s", "rank_database full s", "{:.2f}"), ("numpy_full_s", "numpy full s", "{:.2f}"),
                ("full_speedup", "full vs numpy", "{:.1f}x"), ("full_identical", "identical", "{}"),
                ("jax_top100_s", "top-100 s", "{:.3f}"), ("numpy_top100_s", "numpy top-100 s", "{:.3f}"),
                ("top_speedup", "top-100 vs numpy", "{:.1f}x"), ("vectorised_s", "scoring s", "{:.3f}"),
                ("isin_scan_s", "isin scan s", "{:.3f}"), ("speedup", "scoring vs isin", "{:.1f}x"),
                ("full_of_bound", "full of bound", "{:.1%}")] + ROOFLINE_COLUMNS,
    "rerank": rerank_bench.SUITE_COLUMNS + ROOFLINE_COLUMNS,
}


def _cell(row: dict, key: str, fmt: str) -> str:
    if key not in row or row[key] is None:
        return "-"
    try:
        return fmt.format(row[key])
    except (ValueError, TypeError):
        return str(row[key])


def _peaks_line(peaks: dict | None) -> str:
    if not peaks:
        return "none (a device not in benchmarks/roofline.py's table: no bounds)"
    return (f"{peaks['float32_flops'] / 1e12:.3g} TFLOP/s float32, {peaks['bfloat16_flops'] / 1e12:.3g} "
            f"TFLOP/s bfloat16, {peaks['bytes_per_s'] / 1e9:.3g} GB/s ({peaks.get('source', '?')}); "
            "of bound = bound / measured")


def markdown(report: dict) -> str:
    d = report["device"]
    devices = d.get("devices", [])
    load = d.get("load_average") or float("nan")
    lines = [
        "# remap-jax benchmark suite",
        "",
        f"- device: {d.get('device_kind', '?')} x {d.get('device_count', '?')} ({d.get('backend', '?')}), "
        f"jax {d.get('jax', '?')}, {d.get('host_cpus', '?')} host CPUs, load average at start "
        f"{load:.2f}",
        f"- jax.devices(): {', '.join(devices[:8])}" + (" ..." if len(devices) > 8 else ""),
        f"- preset {report['preset']}, total {report['total_s']:.0f} s of a {report['timeout_s']:.0f} s "
        "budget",
        "- roofline peaks: " + _peaks_line(report.get("peaks")),
        "",
        "| block | status | seconds | budget s | rows | skipped |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, block in report["blocks"].items():
        lines.append(f"| {name} | {block['status']} | {block['seconds']:.0f} | {block['budget_s']:.0f} | "
                     f"{len(block['rows'])} | {len(block['skipped'])} |")
    for name, block in report["blocks"].items():
        lines += ["", f"## {name}", ""]
        if block["error"]:
            lines += [f"error: {block['error']}", ""]
        columns = COLUMNS[name]
        if block["rows"]:
            lines.append("| " + " | ".join(h for _, h, _ in columns) + " | error |")
            lines.append("|" + "---|" * (len(columns) + 1))
            for r in block["rows"]:
                cells = [_cell(r, k, f) for k, _, f in columns]
                lines.append("| " + " | ".join(cells) + f" | {r.get('error', '')} |")
        elif not block["error"]:
            lines.append("no rows")
        if block["skipped"]:
            lines += ["", "skipped (budget): " + "; ".join(
                ", ".join(f"{k}={v}" for k, v in s.items() if k != "reason") for s in block["skipped"])]
    return "\n".join(lines) + "\n"
