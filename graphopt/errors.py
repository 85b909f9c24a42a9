"""Errors a user can act on. The CLI turns them into one line on stderr and exit code 2."""
from __future__ import annotations

import os
import traceback

__all__ = ["GraphoptError", "CaptureError", "SpecError", "PlanError", "SizeError", "OutputError",
           "user_frame", "first_line"]


class GraphoptError(Exception):
    """Bad input: the message says what was wrong and what to try."""


class SpecError(GraphoptError):
    """A model spec that cannot be loaded (missing file, missing factory, factory raised)."""


class CaptureError(GraphoptError):
    """A model that cannot be captured in the requested mode."""


class PlanError(GraphoptError):
    """A plan (partition, fusion, memory) that cannot be made or read as asked."""


class SizeError(GraphoptError):
    """A byte size (or memory budget) written in a form :mod:`graphopt.units` does not read."""


class OutputError(GraphoptError):
    """An output directory or file that cannot be created or written."""


_STDLIB = os.path.dirname(traceback.__file__) + os.sep
_SKIP_PARTS = (f"{os.sep}torch{os.sep}", f"{os.sep}graphopt{os.sep}", f"{os.sep}functorch{os.sep}",
               f"{os.sep}site-packages{os.sep}torch", f"{os.sep}contextlib.py", "<frozen ", "<string>")


def user_frame(exc: BaseException) -> str | None:
    """``file:line (code)`` of the innermost frame outside torch, graphopt and the stdlib.

    Tracing errors surface deep inside torch; the frame a user can fix is the last one of theirs.
    """
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    for fr in reversed(frames):
        in_stdlib = fr.filename.startswith(_STDLIB) and "site-packages" not in fr.filename
        if in_stdlib or any(p in fr.filename for p in _SKIP_PARTS):
            continue
        code = f" `{fr.line.strip()}`" if fr.line else ""
        return f"{fr.filename}:{fr.lineno}{code}"
    return None


def first_line(exc: BaseException, limit: int = 240) -> str:
    """The first meaningful line of an exception's message, trimmed."""
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line:
            return (line[: limit - 3] + "...") if len(line) > limit else line
    return type(exc).__name__
