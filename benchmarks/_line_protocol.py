"""One JSON object per line: how a benchmark drives a worker process that it times side by side with itself.

The parent holds a `LineWorker` (the child's command and environment; `request(cmd=..., ...)` sends one
message and returns the reply, raising on {"error": ...}); the child calls `serve(handle)`, which answers
each message with `handle(msg)` until {"cmd": "quit"} or the end of its input. The child's stdout carries
the replies only: anything else it prints goes to stderr. Standard library only, so that a worker in
another virtualenv (`_torch_worker.py`, which has torch and no remap-jax) can import it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable


class LineWorker:
    """A child process answering JSON lines; the first line it writes must be {"ready": true}."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None, name: str = "worker"):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ) if env is None else env, bufsize=1)
        ready = self._read()
        if not ready.get("ready"):
            raise RuntimeError(f"{self.name}: unexpected first reply {ready}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited (code {self.proc.poll()}); see its messages above")
        return json.loads(line)

    def request(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def serve(handle: Callable[[dict], dict]) -> None:
    """The child's loop: {"ready": true}, then one reply per message (an exception becomes {"error": ...})."""
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the reply stream
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        if msg.get("cmd") == "quit":
            break
        try:
            reply = handle(msg)
        except Exception as e:  # reported to the parent, which decides what to do
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
