"""Test configuration: simulated CPU devices for multi-device tests, quiet TensorFlow."""

import os

# 8 simulated CPU devices so the data-parallel code paths run on this machine. Must be set before JAX
# initialises its backends, which is why it lives here and not in a fixture. Added to flags the caller sets
# (e.g. `XLA_FLAGS=--xla_cpu_max_isa=AVX2` to run the suite as an older CPU would) unless they name a count.
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_collection_modifyitems(config, items):
    """Drops `test_session`, a helper that tf.test.TestCase (the base of TFDS's builder test case) defines.

    pytest collects it as a test and TensorFlow then skips it as "Not a test"; it tests nothing of ours.
    """
    dropped = [item for item in items if item.name == "test_session"]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item.name != "test_session"]
