"""Checkpoints (Orbax) and metrics (TensorBoard event files) of a training run.

A checkpoint holds the train state, the epoch's mined tuples and the loop position (epoch, step in epoch,
best validation mAP), so a killed run resumes to the same parameters as an uninterrupted one.

Orbax reports a full disk from its writer (tensorstore) as a ValueError carrying `os_error_code='28'`, and a
read-only folder as an OSError without a file name; `Checkpoints` raises both as an OSError naming the
checkpoint folder, after removing the unfinished `STEP.orbax-checkpoint-tmp*` folder.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import time
from collections.abc import Mapping

import jax
import numpy as np
from flax import serialization

from train.step import TrainState


class CheckpointMismatchError(ValueError):
    """The workdir holds a checkpoint whose structure does not match the current config."""


class Checkpoints:
    """Orbax CheckpointManager over `directory`: train state + mined tuples + loop position."""

    def __init__(self, directory: str, keep: int):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = os.path.abspath(directory)
        with self._os_errors():
            self.manager = ocp.CheckpointManager(
                self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            )

    @contextlib.contextmanager
    def _os_errors(self):
        """Orbax's file-system failures as an OSError naming the folder; unfinished checkpoints removed."""
        try:
            yield
        except (OSError, ValueError) as e:
            code = re.search(r"os_error_code='?(\d+)", str(e)) if isinstance(e, ValueError) else None
            if isinstance(e, ValueError) and code is None:
                raise
            for tmp in glob.glob(os.path.join(glob.escape(self.directory), "*.orbax-checkpoint-tmp*")):
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                if e.filename is None:
                    e.filename = self.directory
                raise
            number = int(code.group(1))
            raise OSError(number, os.strerror(number) if number else "write failed", self.directory) from e

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, tuples: np.ndarray, meta: dict) -> None:
        ocp = self._ocp
        tree = {"state": serialization.to_state_dict(state), "tuples": np.asarray(tuples)}
        with self._os_errors():
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                            meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, step: int, template: TrainState, tuples_shape: tuple[int, int]):
        """(state, tuples, meta) of checkpoint `step`; raises CheckpointMismatchError if it does not fit."""
        ocp = self._ocp
        target = {"state": serialization.to_state_dict(template), "tuples": np.zeros(tuples_shape, np.int64)}
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                     meta=ocp.args.JsonRestore()))
        except ValueError as e:  # Orbax: saved tree / shapes differ from this run's
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.manager.directory} was written by a run with a different "
                "model, optimiser or batch layout than this config, so it cannot be resumed; use a new "
                f"--workdir (or delete that one) to start afresh. Orbax said: {str(e)[:600]}"
            ) from e
        state = serialization.from_state_dict(template, out["state"]["state"])
        return state, np.asarray(out["state"]["tuples"]), dict(out["meta"])

    def wait(self) -> None:
        with self._os_errors():
            self.manager.wait_until_finished()

    def close(self) -> None:
        with self._os_errors():
            self.manager.wait_until_finished()
        self.manager.close()


def kept_checkpoints(workdir: str) -> str:
    """What a failed training run leaves to resume from, in words: its finished checkpoints, if any."""
    directory = os.path.join(workdir, "checkpoints")
    steps = sorted(int(n) for n in (os.listdir(directory) if os.path.isdir(directory) else ()) if n.isdigit())
    if not steps:
        return "no checkpoint was written: a rerun starts from the beginning"
    return (f"kept the checkpoints in {directory} (latest step {steps[-1]}): rerun the same command to "
            "resume")


class MetricWriter:
    """Scalars to TensorBoard event files in `logdir` (process 0 only; no-op elsewhere)."""

    def __init__(self, logdir: str):
        self._writer = None
        if jax.process_index() == 0:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self._writer = EventFileWriter(logdir)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if self._writer is None:
            return
        from tensorboard.compat.proto import event_pb2, summary_pb2

        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                               summary=summary_pb2.Summary(value=values)))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
