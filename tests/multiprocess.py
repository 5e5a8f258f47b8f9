"""Running a job as several local JAX processes (gloo collectives on 127.0.0.1), for the multi-process tests.

    results = run_processes(["tests/train_worker.py", "--workdir", W], num_processes=2, devices_per_process=2)

Each process gets `--coordinator_address 127.0.0.1:PORT --num_processes N --process_id I` appended and
`devices_per_process` simulated CPU devices. Returns one `subprocess.CompletedProcess` per process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(devices: int) -> dict:
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    return env


def run_processes(command: list[str], num_processes: int, devices_per_process: int,
                  timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Starts `python *command` as `num_processes` processes of one JAX job and waits for all of them.

    A process that does not finish within `timeout` seconds is killed (with the others) and reported with
    return code -9, so a hang in a collective fails the test instead of blocking it.
    """
    if num_processes == 1:
        procs = [subprocess.Popen([sys.executable, *command], cwd=ROOT, env=environment(devices_per_process),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    else:
        address = f"127.0.0.1:{free_port()}"
        procs = [subprocess.Popen(
            [sys.executable, *command, "--coordinator_address", address,
             "--num_processes", str(num_processes), "--process_id", str(i)],
            cwd=ROOT, env=environment(devices_per_process), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True) for i in range(num_processes)]
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            out, err = proc.communicate()
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def describe(results: list[subprocess.CompletedProcess]) -> str:
    """The return codes and the tails of every process's stderr, for assertion messages."""
    return "\n".join(f"--- process {i}: return code {r.returncode}\n{r.stderr[-3000:]}"
                     for i, r in enumerate(results))
