"""Band lists as users type them: one parser for the command line, QGIS and the engine.

Standard library only, so the QGIS side (which has no torch or rasterio) uses the same
rules as the backend: ``"4,3,2"``, ``"4 3 2"`` and ``"4;3;2"`` all mean bands 4, 3 and 2
(1-based, in output order); an empty text means "the default bands".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import UserInputError  # relative: QGIS imports this module as slimdiffsr.backend.bands


class BandListError(UserInputError, ValueError):
    """A band list that cannot be used; the message shows the accepted form."""


def parse_bands(spec: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"4,3,2"`` (commas, spaces or semicolons) or a sequence -> ``(4, 3, 2)``; empty -> None.

    Raises :class:`BandListError` for text that is not band numbers, numbers below 1, and
    a band listed twice.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        parts = [p for p in re.split(r"[,;\s]+", spec.strip()) if p]
        if not parts:
            return None
        try:
            bands = tuple(int(p) for p in parts)
        except ValueError:
            raise BandListError(
                f"bands '{spec.strip()}' are not a list of band numbers; write 1-based numbers such as 4,3,2"
            ) from None
    else:
        bands = tuple(int(b) for b in spec)
        if not bands:
            return None
    if any(b < 1 for b in bands):
        raise BandListError(f"band numbers start at 1 (got {min(bands)}); write e.g. 4,3,2")
    if len(set(bands)) != len(bands):
        raise BandListError(f"band list {','.join(map(str, bands))} repeats a band; list each band once")
    return bands
