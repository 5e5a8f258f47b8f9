"""One line, not a traceback, when the operating system refuses a command's read or write.

Every command's `main` is wrapped in `reports_os_errors(prog)`: an `OSError` (a full disk, a read-only or
missing folder, no permission, a file that vanished mid-run) ends it with exit status 2 and one line on
stderr, ``PROG: FILE: CAUSE; WHAT WAS KEPT``, e.g.

    remap-extract: /data/db.npz: No space left on device; kept /data/db.partial.npz (120 described):
    rerun the same command to resume

What was kept is "nothing was written" unless the code that was running said otherwise with `keeping`
(checked when the error arrives, so it states what is on disk then). Outputs themselves are never left
half-written: the commands write through `remap_jax.runtime.atomic`, which removes its temporaries.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable

from remap_jax.runtime.atomic import destination_of

__all__ = ["NOTHING_WRITTEN", "STATUS", "describe_os_error", "keeping", "reports_os_errors"]

STATUS = 2  # the commands' exit status for input errors, and for these
NOTHING_WRITTEN = "nothing was written"


@contextlib.contextmanager
def keeping(kept: Callable[[], str | None]):
    """An `OSError` raised inside carries `kept()` (what stays on disk, e.g. a resumable partial file; None:
    fall back to the outer `keeping`, or "nothing was written") to `reports_os_errors`."""
    try:
        yield
    except OSError as e:
        if getattr(e, "kept", None) is None:
            try:
                e.kept = kept()
            except OSError:  # the disk that failed may not answer either
                e.kept = None
        raise


def describe_os_error(prog: str, error: OSError) -> str:
    """``PROG: FILE: CAUSE; KEPT`` on one line (no file when the error names none). A file in a folder being
    written under a temporary name is named by where it was going."""
    cause = error.strerror or str(error) or type(error).__name__
    where = error.filename if error.filename is None else destination_of(os.fsdecode(error.filename))
    if where is not None and error.filename2 is not None:
        where = f"{where} -> {destination_of(os.fsdecode(error.filename2))}"
    if where is None or error.strerror is None:  # a message of our own already says where
        text = f"{prog}: {cause}"
    else:
        text = f"{prog}: {where}: {cause}"
    kept = getattr(error, "kept", None) or NOTHING_WRITTEN
    return " ".join(f"{text}; {kept}".split())


def reports_os_errors(prog: str, exit: bool = False):
    """Decorator of a command's `main`: an `OSError` prints `describe_os_error` and returns `STATUS`
    (`exit=True`: raises `SystemExit(STATUS)`, for a main whose return value is not an exit status)."""

    def decorate(main):
        @functools.wraps(main)
        def command(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except OSError as e:
                print(describe_os_error(prog, e), file=sys.stderr, flush=True)
                if exit:
                    raise SystemExit(STATUS) from None
                return STATUS

        return command

    return decorate
