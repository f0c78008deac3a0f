"""The one error hierarchy of the backend: what the user did wrong, what failed, cancelled.

Every module raises a subclass of :class:`SlimDiffSRError` for a failure it expects, with a
message written for the user in one line (what, why, what to do). Callers (the command
line, the QGIS worker) then need no list of class names: ``isinstance`` against these
bases decides the exit code, and anything else is a bug, reported as "unexpected" with
its traceback kept for the log.

* :class:`UserInputError`: the request, a file or a parameter cannot be used (exit 2).
  Nothing was written; fixing the input and running again is the remedy.
* :class:`RunError`: the run started and failed (disk full, a file damaged halfway, out
  of memory) (exit 1). The output's previous content, if any, is kept.
* :class:`Cancelled`: the user or the caller stopped the run (exit 130).
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130


def one_line(text: object, limit: int = 300) -> str:
    """The first non-empty line of ``text``, at most ``limit`` characters.

    Library messages (GDAL, torch) can span lines or carry a whole traceback; the user gets
    one line, the log gets the rest.
    """
    for line in str(text).strip().splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


class SlimDiffSRError(Exception):
    """A failure the backend expected; ``str(exc)`` is one line for the user."""

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message, 1000) or type(self).__name__)


class UserInputError(SlimDiffSRError):
    """The request, an input file, the weights or a parameter cannot be used (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class RunError(SlimDiffSRError):
    """The run started and failed: disk full, a file damaged halfway, out of memory (exit 1)."""

    exit_code = EXIT_FAILED


class Cancelled(SlimDiffSRError):  # noqa: N818 - a state, not a fault
    """The run was stopped on request; nothing was written (exit 130)."""

    exit_code = EXIT_CANCELLED


def exit_code(exc: BaseException) -> int:
    """The process exit code for ``exc``: 2 bad input, 1 failure, 130 cancelled."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_CANCELLED
    code = getattr(exc, "exit_code", EXIT_FAILED) if isinstance(exc, SlimDiffSRError) else EXIT_FAILED
    return int(code)
