"""Band selection and the mapping between raster values and the model's [0, 1] range.

One mapping per band group, computed ONCE from global statistics and applied identically
to every tile (per-tile stretching makes each tile's brightness depend on its content and
shows as jumps between tiles):

* uint8: the fixed range [0, 255], which is what the model was trained on;
* other types: robust percentiles (0.1 %, 99.9 %) pooled over the group's bands, from a
  decimated read of the whole raster (GDAL uses overviews when present), nodata excluded.
  Pooling keeps the ratios between bands, hence the colour balance.

The inverse maps the model's output back to the input's units and data type. Values
outside the percentile range are not clipped: the model step carries them past the network
(:func:`backend.radiometry.split_range`), so only the data type's own limits bound the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rasterio.enums import ColorInterp
from scipy import ndimage

from backend.engine.options import EngineError
from backend.radiometry import stretch_range

STATS_MAX_PIXELS = 2_000_000
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")


@dataclass(frozen=True)
class BandGroup:
    """Up to three input bands that go through the model together as one RGB image."""

    bands: tuple[int, ...]
    """1-based input band indexes (1 to 3 of them)."""
    slots: tuple[int, ...]
    """Positions of these bands in the output band list."""
    lo: float
    hi: float

    def channels(self) -> tuple[int, ...]:
        """Indexes into ``bands`` for the model's three channels (short groups repeat)."""
        k = len(self.bands)
        return tuple(min(i, k - 1) for i in range(3))


@dataclass(frozen=True)
class Radiometry:
    """The global value mapping of one run (same for every tile)."""

    dtype: str
    groups: tuple[BandGroup, ...]
    nodata: float | None

    @property
    def bands(self) -> tuple[int, ...]:
        """Input bands in output order."""
        out: list[int] = [0] * sum(len(g.bands) for g in self.groups)
        for g in self.groups:
            for b, slot in zip(g.bands, g.slots, strict=True):
                out[slot] = b
        return tuple(out)

    def to_model(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Raw values of :attr:`bands` [n, h, w] -> model input [groups, 3, h, w], [0, 1] at the
        stretch's ends and beyond them outside.

        Invalid pixels are filled with their nearest valid neighbour before the model sees
        them, so a nodata collar (often 0 = black) cannot bleed into valid pixels through
        the network's receptive field.
        """
        x = data.astype(np.float32, copy=False)
        if not valid.all():
            x = fill_invalid(x, valid)
        out = np.empty((len(self.groups), 3, *data.shape[1:]), dtype=np.float32)
        for gi, g in enumerate(self.groups):
            span = max(g.hi - g.lo, 1e-12)
            for ci, k in enumerate(g.channels()):
                out[gi, ci] = (x[g.slots[k]] - np.float32(g.lo)) / np.float32(span)
        # Not clipped to [0, 1]: values beyond the stretch go round the network through the
        # identity path (ModelStep.raw), so highlights keep their values.
        return np.nan_to_num(out, copy=False, posinf=1.0, neginf=0.0)

    def from_model(self, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Blended output bands [n, h, w] ([0, 1] at the stretch's ends) -> the input's data type.

        Invalid pixels get the nodata value (0 when there is none); valid pixels whose value
        would equal the nodata value are nudged by one step so they stay valid.
        """
        dt = np.dtype(self.dtype)
        # float32 holds every 8- and 16-bit value exactly; wider types need float64
        work = np.float32 if dt.itemsize <= 2 else np.float64
        out = np.empty(values.shape, dtype=work)
        if not valid.any():
            out.fill(0)
        for g in self.groups if valid.any() else ():
            for slot in g.slots:
                out[slot] = work(g.lo) + values[slot].astype(work) * work(g.hi - g.lo)
        if dt.kind in "iu":
            info = np.iinfo(dt)
            np.rint(out, out=out)
            np.clip(out, info.min, info.max, out=out)
            result = out.astype(dt)
            if self.nodata is not None and info.min <= self.nodata <= info.max:
                nd = dt.type(self.nodata)
                step = 1 if nd < info.max else -1
                clash = (result == nd) & valid[None]
                result[clash] = nd + dt.type(step) if step > 0 else nd - dt.type(1)
        else:
            result = out.astype(dt)
            if self.nodata is not None and np.isfinite(self.nodata):
                clash = (result == dt.type(self.nodata)) & valid[None]
                result[clash] = np.nextafter(dt.type(self.nodata), dt.type(np.inf))
        fill = self.nodata if self.nodata is not None else 0
        result[:, ~valid] = dt.type(fill)
        return result

    def describe(self) -> list[dict[str, object]]:
        return [{"bands": list(g.bands), "lo": g.lo, "hi": g.hi} for g in self.groups]


def fill_invalid(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Copy of ``x`` [n, h, w] where invalid pixels take the nearest valid pixel's value."""
    if not valid.any():
        return np.zeros_like(x)
    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return x[:, idx[0], idx[1]]


def select_bands(
    count: int, colorinterp: tuple[ColorInterp, ...], bands: tuple[int, ...] | None, all_bands: bool
) -> tuple[tuple[int, ...], int | None]:
    """(bands to super-resolve in output order, alpha band or None).

    Defaults: red, green, blue by colour interpretation; else the first three non-alpha
    bands; 1- and 2-band rasters use all their bands. ``all_bands``: every non-alpha band.
    """
    alpha = next((i + 1 for i, ci in enumerate(colorinterp) if ci == ColorInterp.alpha), None)
    data_bands = [b for b in range(1, count + 1) if b != alpha]
    if bands is not None:
        bad = [b for b in bands if not 1 <= b <= count]
        if bad:
            raise EngineError(
                f"band {bad[0]} does not exist: the raster has {count} band(s); use numbers 1 to {count}"
            )
        if len(set(bands)) != len(bands):
            raise EngineError(f"band list {','.join(map(str, bands))} repeats a band; list each band once")
        return bands, (alpha if alpha not in bands else None)
    if not data_bands:
        raise EngineError("the raster has no data bands (only alpha); nothing to super-resolve")
    if all_bands:
        return tuple(data_bands), alpha
    lookup = {ci: i + 1 for i, ci in enumerate(colorinterp)}
    rgb = [lookup.get(ColorInterp.red), lookup.get(ColorInterp.green), lookup.get(ColorInterp.blue)]
    if all(rgb):
        return tuple(int(b) for b in rgb if b is not None), alpha
    return tuple(data_bands[:3]), alpha


def group_bands(bands: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Split output bands into model groups of three: [(bands, output slots), ...]."""
    return [(bands[i : i + 3], tuple(range(i, min(i + 3, len(bands))))) for i in range(0, len(bands), 3)]


def value_range(dtype: str, samples: np.ndarray) -> tuple[float, float]:
    """(lo, hi) for one group from its valid sample values (1-D)."""
    stretch = stretch_range(dtype, samples)
    if stretch is None:
        raise EngineError("the selected bands have no valid pixel (all nodata); nothing to super-resolve")
    return stretch


def decimated_shape(height: int, width: int, max_pixels: int = STATS_MAX_PIXELS) -> tuple[int, int]:
    f = max(1.0, (height * width / max_pixels) ** 0.5)
    return max(1, int(height / f)), max(1, int(width / f))
