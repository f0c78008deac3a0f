"""Ctrl-C and SIGTERM as a request to stop at the next safe point.

A KeyboardInterrupt raised wherever the signal happens to land can interrupt a library
halfway (a progress bar's constructor, a GDAL write) and print a traceback from its
destructor. Long jobs (a raster run, a training run) instead poll a flag between units of
work, then clean up: the engine removes its temporary output, the trainer checkpoints.
"""

from __future__ import annotations

import signal
from typing import Any


class StopRequest:
    """While entered, SIGINT/SIGTERM set ``self.signal`` instead of interrupting.

    ``force_on_repeat``: a second signal raises KeyboardInterrupt, for a user who does not
    want to wait for the current unit of work. Outside the main thread nothing is installed
    (Python allows handlers only there); callers' other limits still apply.
    """

    def __init__(self, force_on_repeat: bool = False) -> None:
        self.signal: int | None = None
        self.force_on_repeat = force_on_repeat
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and self.force_on_repeat:
            raise KeyboardInterrupt
        self.signal = signum

    def __bool__(self) -> bool:
        return self.signal is not None

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
