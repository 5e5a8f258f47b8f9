"""The scripts in tools/ (fixture writers that run in a torch virtualenv) loaded as modules, so tests can
reuse their pure-numpy parts (weights drawn from a seed, fixture layouts) without running them."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(filename: str):
    """tools/<filename> as a module (its `if __name__ == "__main__"` part does not run)."""
    path = os.path.join(ROOT, "tools", filename)
    spec = importlib.util.spec_from_file_location(os.path.splitext(filename)[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
