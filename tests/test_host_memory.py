"""remap_jax.runtime.host_memory: which settings apply, their environment form, and that a JAX program's
buffers stop
page-faulting with them (counted page faults, in fresh processes: this one started JAX long ago)."""

import json
import os
import subprocess
import sys

import pytest

from remap_jax.runtime import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = sys.platform.startswith("linux") and __import__("platform").libc_ver()[0] == "glibc"

# A program whose 96 MB output (and temporaries) are allocated at every call; the fewest page faults of the
# last eight of sixteen calls. With the settings, the first calls grow the heap (a freed buffer comes back
# after the next call has asked for one) until enough freed buffers circulate, after up to ten calls, then
# calls take none. Without them glibc mmaps such buffers (above its 32 MB dynamic limit) and the kernel
# gives every call fresh pages: about 24k faults of 4 KiB.
FAULTS = """
import json, resource, sys, warnings
from remap_jax.runtime import host_memory
if sys.argv[1] == "late":
    import jax
    jax.devices()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    applied = host_memory.apply_requested() if sys.argv[1] == "default" else host_memory.retain_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sin(x) * 2.0 + jnp.cos(x)[::-1])
x = jnp.ones((24 * 2**20,), jnp.float32)
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = f(x)
    y.block_until_ready()
    del y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = min(faults[-8:])
print(json.dumps({"applied": applied, "faults": faults, "warnings": [str(w.message) for w in caught]}))
"""


def _run(mode: str, **env) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "XLA_FLAGS", host_memory.SWITCH)}
    proc = subprocess.run([sys.executable, "-c", FAULTS, mode], env={**clean, **env, "JAX_PLATFORMS": "cpu"},
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_settings_leave_what_the_user_named_alone():
    everything = host_memory.settings({})
    assert everything == {name: value for name, (_, _, value) in host_memory.SETTINGS.items()}
    assert everything["arena_max"] == 1 and everything["mmap_threshold"] == (1 << 31) - 1
    assert "arena_max" not in host_memory.settings({"MALLOC_ARENA_MAX": "8"})
    tunables = {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0:glibc.malloc.mmap_threshold=4096"}
    assert host_memory.settings(tunables) == {"arena_max": 1}
    assert host_memory.environment({"MALLOC_ARENA_MAX": "8"}) == {
        "MALLOC_MMAP_THRESHOLD_": str((1 << 31) - 1), "MALLOC_TRIM_THRESHOLD_": str((1 << 31) - 1)}
    named = {variable: "1" for _, variable, _ in host_memory.SETTINGS.values()}
    assert host_memory.environment(named) == {} and host_memory.retain_freed_memory(named) == {}


def test_the_commands_apply_them_only_when_asked():
    assert not host_memory.requested({}) and not host_memory.requested({"REMAP_JAX_RETAIN_MEMORY": "0"})
    assert host_memory.requested({"REMAP_JAX_RETAIN_MEMORY": "1"})
    assert host_memory.apply_requested({}) == {}  # nothing asked: malloc left alone
    with pytest.raises(ValueError, match="REMAP_JAX_RETAIN_MEMORY='yes': expected 1"):
        host_memory.requested({"REMAP_JAX_RETAIN_MEMORY": "yes"})


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's; other C libraries get none")
def test_buffers_stop_page_faulting_with_the_settings_applied_or_inherited():
    default = _run("default")
    assert default["applied"] == {} and default["faults"] > 10_000, default  # the problem is real here
    retained = _run("retain")
    assert retained["applied"] == host_memory.settings({}) and not retained["warnings"]
    assert retained["faults"] < default["faults"] / 10, (retained, default)
    inherited = _run("default", **host_memory.environment({}))  # glibc reads them at start-up
    assert inherited["faults"] < default["faults"] / 10, (inherited, default)
    asked = _run("default", REMAP_JAX_RETAIN_MEMORY="1")  # as the describing commands, when asked
    assert asked["applied"] == retained["applied"] and asked["faults"] < default["faults"] / 10, asked
    user = _run("retain", MALLOC_ARENA_MAX="8")  # the user's choice wins (thread arenas: faults, mostly)
    assert user["applied"] == {k: v for k, v in retained["applied"].items() if k != "arena_max"}


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's; other C libraries get none")
def test_a_running_jax_backend_gets_a_warning():
    late = _run("late")  # applied anyway: threads started later use the main heap
    assert late["applied"] == host_memory.settings({})
    assert len(late["warnings"]) == 1 and "before the first JAX computation" in late["warnings"][0]
