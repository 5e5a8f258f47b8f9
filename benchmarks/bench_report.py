"""What the benchmarks share when they report: JSON of measurement rows (numpy values included), a finished
row echoed to stderr as one JSON line while a run goes on, and the end of a run (the table printed, the rows
and the setup written as JSON)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence

import numpy as np


def json_default(value):
    """`json.dumps(..., default=json_default)`: numpy arrays as lists, numpy scalars as numbers, anything else
    as its str()."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def echo_row(row: dict) -> None:
    """One finished row as a JSON line on stderr (its per-call `*_times` lists left out)."""
    print(json.dumps({k: v for k, v in row.items() if not k.endswith("_times")}), file=sys.stderr, flush=True)


def markdown_table(columns: Sequence[str], align: str, rows: Iterable[Sequence]) -> str:
    """A Markdown table: `columns` (titles), `align` (one letter a column: "l" left, "r" right), `rows`
    (cells, already formatted)."""
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    lines = ["| " + " | ".join(columns) + " |", rule]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def print_and_save(table: str, json_path: str | None, rows: list[dict], setup: dict) -> None:
    """Prints `table`; with `json_path`, writes {"setup", "rows"} there (atomically)."""
    from remap_jax.runtime import atomic

    print(table)
    if json_path:
        atomic.write_json(json_path, {"setup": setup, "rows": rows})
