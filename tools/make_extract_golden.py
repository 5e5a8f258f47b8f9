"""Rewrites tests/fixtures/extract_golden.npz from the current code (after an intended change of numbers).

    python tools/make_extract_golden.py
"""

import importlib.util
import os
import tempfile
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    path = os.path.join(ROOT, "tests", "test_extract_golden.py")
    spec = importlib.util.spec_from_file_location("golden", path)
    golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(golden)
    with tempfile.TemporaryDirectory() as tmp:
        golden.write_fixture(Path(tmp))
    print(f"wrote {golden.FIXTURE}")
