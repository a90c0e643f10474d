"""Killing a test worker at an exact file-system step, with Python's audit hooks (PEP 578).

The hook sees every file-system change the process is about to make (opening a file for writing,
a rename, a hard link, a deletion) *before* it happens, whatever code makes it, so a test can place a
SIGKILL between any two such steps of a checkpoint write without patching the code under test.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_CHANGES = {"os.rename", "os.link", "os.remove", "os.rmdir", "os.truncate", "os.symlink"}


def describe(event: str, args: tuple) -> str | None:
    """A one-line description of a file-system change in ``event``, or None if it changes nothing."""
    if event == "open":
        path, mode, flags = args
        if not isinstance(path, (str, bytes, os.PathLike)):
            return None  # a file descriptor opened again (os.fdopen): nothing new in the folder
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        return f"open {Path(os.fsdecode(path)).name} for writing" if writes and path is not None else None
    if event in ("os.rename", "os.link"):
        src, dst = args[0], args[1]
        return f"{event} {Path(os.fsdecode(src)).name} -> {Path(os.fsdecode(dst)).name}"
    if event in _CHANGES:
        return f"{event} {Path(os.fsdecode(args[0])).name}"
    return None


def kill_before(
    folder: Path, should_die: Callable[[int, str], bool], report: Callable[[str], None] | None = None
) -> None:
    """Install a hook that SIGKILLs this process right before the file-system change in ``folder`` for
    which ``should_die(index, description)`` is true (index counts the changes in ``folder`` from 1).
    ``report`` (default: print to stdout) gets ``"killed before: <description>"`` first, so the parent
    knows where the process died."""
    folder = Path(folder).resolve()
    count = 0

    def hook(event: str, args: tuple) -> None:
        nonlocal count
        what = describe(event, args)
        if what is None:
            return
        try:
            inside = Path(os.fsdecode(args[0])).resolve().parent == folder
        except (TypeError, ValueError):
            return
        if not inside:
            return
        count += 1
        if should_die(count, what):
            (report or _print)(f"killed before: {what}")
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
