"""The one mapping between raster values and the model's [0, 1] range.

Training, evaluation, the engine and the quality check all import it, so the network sees
at inference exactly the input it learned on:

* uint8: the fixed range [0, 255];
* every other type: robust percentiles (:data:`PERCENTILES`) pooled over the bands that
  go through the model together (pooling keeps the ratios between bands, hence the colour
  balance), nodata and non-finite values excluded.

Values beyond the percentiles are not lost: :func:`split_range` cuts an input into the
part inside [0, 1], which the network restores, and the excess outside it, which the
caller carries through the identity path (bicubic enlargement) and adds back, so a bright
roof or a sun glint keeps its value instead of saturating at the 99.9th percentile.
"""

from __future__ import annotations

import numpy as np

PERCENTILES = (0.1, 99.9)


def stretch_range(dtype: str | np.dtype, samples: np.ndarray) -> tuple[float, float] | None:
    """(lo, hi) of the stretch for ``samples`` (1-D values of one band group) of ``dtype``;
    None when no finite sample is left (the caller says which file or raster)."""
    if np.dtype(dtype) == np.uint8:
        return 0.0, 255.0
    values = np.asarray(samples, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
    if not hi > lo:
        hi = lo + (1.0 if np.dtype(dtype).kind in "iu" else max(abs(lo) * 1e-6, 1e-6))
    return lo, hi


def to_unit(values: np.ndarray, lo: float, hi: float, clip: bool = True) -> np.ndarray:
    """Raw values -> float32 with ``lo`` at 0 and ``hi`` at 1 (clipped to [0, 1] by default)."""
    out = (np.asarray(values, dtype=np.float32) - np.float32(lo)) / np.float32(max(hi - lo, 1e-12))
    return np.clip(out, 0.0, 1.0, out=out) if clip else out


def split_range(unit: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(the part in [0, 1], the excess beyond it or None when there is none)."""
    inside = np.clip(unit, 0.0, 1.0)
    if np.array_equal(inside, unit):
        return inside, None
    return inside, unit - inside
