"""Writes a parity fixture: arrays and a JSON `meta` entry (uint8 bytes) in one compressed `.npz`, through a
temporary file so a killed run leaves the old fixture in place. Used by the fixture writers in this folder,
which run in a torch virtualenv without remap_jax."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def fixture_parser(doc: str, fixture: str) -> argparse.ArgumentParser:
    """A writer's command line: its docstring as help, `--out` defaulting to tests/fixtures/`fixture`."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", fixture)
    parser.add_argument("--out", default=default_out)
    return parser


def write_fixture_npz(path: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Writes `arrays` plus `meta` (JSON, under key "meta") to `path`, then prints the file's size."""
    arrays = {**arrays, "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    size = os.path.getsize(path)
    print(f"wrote {path} ({size / 1e6:.2f} MB)" if size >= 1e6 else f"wrote {path} ({size / 1e3:.0f} KB)")
