"""The benchmark suite's rows on disk: a block worker appends them as JSON lines (`RowWriter`, which also
skips a row predicted not to fit the block's deadline), the parent reads them back (`read_block`).

Records of `blocks/NAME.jsonl`, one per line: {"device": ...}, {"peaks": ...}, {"config": ...},
{"row": {...}} (a later row with the same key fields replaces an earlier one), {"skipped": {...}, "reason"},
{"done": true}.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback

from bench_report import json_default


class RowWriter:
    """Appends a block's rows (and skipped configurations) as JSON lines, flushed one by one, and decides
    whether the next row fits the block's deadline: a row is predicted to take as long as the slowest row
    of the same `kind` so far, a row of a new kind as long as the mean row so far (the block's first row
    always runs; the parent's hard limit still stops it)."""

    def __init__(self, path: str, deadline: float):
        self.file = open(path, "a", buffering=1)
        self.deadline = deadline
        self.cost: dict[str, float] = {}

    def fits(self, kind: str, config: dict) -> bool:
        left = self.deadline - time.time()
        costs = list(self.cost.values())
        predicted = self.cost.get(kind, sum(costs) / len(costs) if costs else 0.0)
        if predicted > left:
            reason = f"predicted {predicted:.0f} s > {max(left, 0):.0f} s left"
            self.write({"skipped": config, "reason": reason})
            return False
        return True

    def timed(self, kind: str, config: dict, fn) -> dict | None:
        """Runs `fn() -> row` (a dict) if it fits; a failing row is written with its error. Returns it."""
        if not self.fits(kind, config):
            return None
        t0 = time.time()
        try:
            row = {**config, **fn()}
        except Exception as e:  # one configuration failing must not stop the others
            row = {**config, "error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()
        self.cost[kind] = max(self.cost.get(kind, 0.0), time.time() - t0)
        row["row_s"] = round(time.time() - t0, 1)
        self.write({"row": row})
        return row

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, default=json_default) + "\n")
        print(json.dumps(record, default=json_default), file=sys.stderr, flush=True)


def device_info() -> dict:
    import jax

    devices = jax.devices()
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "host_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def read_block(path: str) -> dict:
    """{config, rows, skipped, done} from a block's JSON lines (the last record of a row wins)."""
    result: dict = {"rows": [], "skipped": [], "done": False, "config": None}
    if not os.path.exists(path):
        return result
    keyed: dict[str, dict] = {}
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            if "row" in record:
                row = record["row"]
                keyed[json.dumps({k: row[k] for k in row if k in _KEY_FIELDS}, sort_keys=True)] = row
            elif "skipped" in record:
                result["skipped"].append({**record["skipped"], "reason": record["reason"]})
            elif "config" in record:
                result["config"] = record["config"]
            elif record.get("done"):
                result["done"] = True
            elif "device" in record:
                result["device"] = record["device"]
            elif "peaks" in record:
                result["peaks"] = record["peaks"]
    result["rows"] = list(keyed.values())
    return result


_KEY_FIELDS = ("shape", "BxHxWxC", "method", "arch", "dtype", "batch", "size", "devices", "num_db", "part",
               "k", "dim", "source", "workers", "draft")
