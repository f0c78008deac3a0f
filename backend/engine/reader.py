"""Reading the input: validation, global radiometry, windowed reads with validity masks.

A :class:`TileReader` owns one rasterio dataset handle; GDAL handles are not thread-safe,
so the reader thread, the writer thread and the main thread each open their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window as RioWindow

from backend.bands import BandListError, parse_bands
from backend.engine.options import EngineError
from backend.engine.plan import Window
from backend.engine.radiometry import (
    STATS_MAX_PIXELS,
    SUPPORTED_DTYPES,
    BandGroup,
    Radiometry,
    decimated_shape,
    group_bands,
    select_bands,
    value_range,
)
from backend.nodata import nodata_problem

STRIP_PIXELS = 4_000_000
"""Pixels per strip when scanning the raster for statistics."""
MIN_INPUT_SIZE = 8
"""Smallest width/height accepted: smaller rasters carry too little context for the model."""


@dataclass(frozen=True)
class SourceInfo:
    """What the engine needs to know about the input, read once."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    """Nodata value in effect (declared, or the caller's override)."""
    bands: tuple[int, ...]
    alpha: int | None
    mask: str
    """How validity is known: 'nodata', 'alpha', 'mask' (internal mask), 'none'."""
    files: tuple[str, ...] = ()
    """Every file GDAL reads for this dataset (a VRT's sources, sidecars): none of them may
    be the output."""
    georeferenced: bool = True
    """Whether the input has a geotransform (or GCPs/RPCs); without, the output gets none."""


@dataclass(frozen=True)
class TileInput:
    window: Window
    lr: np.ndarray | None
    """[groups, 3, h, w] float32 in [0, 1]; None when every pixel is nodata (skipped)."""
    valid: np.ndarray


def _one_line(exc: BaseException) -> str:
    # rasterio chains GDAL's own message as the cause of a generic "See previous exception"
    while "previous exception" in str(exc) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def check_nodata(value: float, dtype: str) -> None:
    """Refuse a nodata value that ``dtype`` cannot hold: no pixel could equal it, and GDAL
    could not record it in the output (:func:`backend.nodata.nodata_problem`)."""
    problem = nodata_problem(value, str(np.dtype(dtype)))
    if problem:
        raise EngineError(problem, "input")


def _representable(value: float | None, dtype: str) -> bool:
    if value is None:
        return True
    try:
        check_nodata(value, dtype)
    except EngineError:
        return False
    return True


def inspect_source(
    path: Path, bands: str | tuple[int, ...] | None, all_bands: bool, nodata: float | None
) -> SourceInfo:
    """Open and validate the input; raise EngineError with a one-line reason."""
    if not path.exists():
        raise EngineError(f"input not found: {path}; check the path")
    if path.is_dir():
        raise EngineError(f"input is a directory, not a raster: {path}")
    try:
        src = rasterio.open(path)
    except RasterioError as exc:
        raise EngineError(
            f"cannot read {path.name} as a raster ({_one_line(exc)}); give a GeoTIFF or another GDAL raster"
        ) from None
    with src:
        if src.count == 0:
            raise EngineError(f"{path.name} has no bands; nothing to super-resolve")
        if src.width < MIN_INPUT_SIZE or src.height < MIN_INPUT_SIZE:
            raise EngineError(
                f"{path.name} is {src.width}x{src.height} pixels; at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} "
                "is needed"
            )
        dtypes = set(src.dtypes)
        if len(dtypes) != 1:
            raise EngineError(
                f"{path.name} mixes band data types {sorted(dtypes)}; convert to one type first"
            )
        dtype = src.dtypes[0]
        if dtype not in SUPPORTED_DTYPES:
            raise EngineError(
                f"{path.name}: data type {dtype} is not supported; use one of {', '.join(SUPPORTED_DTYPES)}"
            )
        try:
            wanted = parse_bands(bands)
        except BandListError as exc:
            raise EngineError(str(exc), "input") from None
        chosen, alpha = select_bands(src.count, tuple(src.colorinterp), wanted, all_bands)
        if nodata is not None:
            check_nodata(nodata, dtype)
            nd: float | None = nodata
        else:
            # A declared value the type cannot hold matches no pixel: it is no nodata at all.
            nd = src.nodata if _representable(src.nodata, dtype) else None
        flags = src.mask_flag_enums[chosen[0] - 1]
        if nd is not None:
            kind = "nodata"
        elif alpha is not None:
            kind = "alpha"
        elif MaskFlags.per_dataset in flags and MaskFlags.all_valid not in flags:
            kind = "mask"
        else:
            kind = "none"
        georeferenced = (
            src.crs is not None or not src.transform.is_identity or bool(src.gcps[0]) or bool(src.rpcs)
        )
        try:
            files = tuple(src.files)
        except (RasterioError, AttributeError):
            files = (str(path),)
        return SourceInfo(
            path, src.width, src.height, src.count, dtype, nd, chosen, alpha, kind, files, georeferenced
        )


class TileReader:
    """Windowed reads of the selected bands plus the validity mask, on its own handle."""

    def __init__(self, info: SourceInfo, radiometry: Radiometry | None = None) -> None:
        self.info = info
        self.radiometry = radiometry
        self._src: rasterio.io.DatasetReader | None = None

    def __enter__(self) -> TileReader:
        try:
            self._src = rasterio.open(self.info.path)
        except RasterioError as exc:
            raise EngineError(f"cannot reopen {self.info.path.name} ({_one_line(exc)})") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None

    @property
    def src(self) -> rasterio.io.DatasetReader:
        if self._src is None:
            raise RuntimeError("TileReader used outside its context")
        return self._src

    def read_window(
        self, row_off: int, col_off: int, height: int, width: int, out_shape: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(data of the selected bands [n, h, w], valid [h, w] bool)."""
        win = RioWindow(col_off, row_off, width, height)
        kw = {}
        if out_shape is not None:
            kw = {"out_shape": (len(self.info.bands), *out_shape), "resampling": Resampling.nearest}
        try:
            data = self.src.read(self.info.bands, window=win, **kw)
            valid = self._valid(data, win, out_shape)
        except RasterioError as exc:
            raise EngineError(
                f"reading {self.info.path.name} failed at rows {row_off}-{row_off + height}, cols "
                f"{col_off}-{col_off + width} ({_one_line(exc)}); the file may be damaged"
            ) from None
        return data, valid

    def _valid(self, data: np.ndarray, win: RioWindow, out_shape: tuple[int, int] | None) -> np.ndarray:
        info = self.info
        kw = {} if out_shape is None else {"out_shape": out_shape, "resampling": Resampling.nearest}
        if info.mask == "nodata":
            nd = info.nodata
            invalid = np.isnan(data) if nd is not None and np.isnan(nd) else data == data.dtype.type(nd)
            valid = ~invalid.all(axis=0)
        elif info.mask == "alpha":
            valid = self.src.read(info.alpha, window=win, **kw) > 0
        elif info.mask == "mask":
            valid = self.src.read_masks(info.bands[0], window=win, **kw) > 0
        else:
            valid = np.ones(data.shape[1:], dtype=bool)
        if data.dtype.kind == "f":
            valid &= np.isfinite(data).all(axis=0)
        return valid

    def read_alpha(self, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        return self.src.read(self.info.alpha, window=RioWindow(col_off, row_off, width, height))

    def read_tile(self, window: Window) -> TileInput:
        """Model input for one window, or lr=None when the window is entirely nodata."""
        if self.radiometry is None:
            raise RuntimeError("read_tile needs the run's radiometry")
        data, valid = self.read_window(window.row_off, window.col_off, window.height, window.width)
        if not valid.any():
            return TileInput(window, None, valid)
        return TileInput(window, self.radiometry.to_model(data, valid), valid)

    def sample(self, max_pixels: int = STATS_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
        """A regular sample of about ``max_pixels`` pixels of the whole raster: (data, valid).

        With overviews GDAL's decimated read is cheap; without them it is very slow (it
        decodes blocks over and over), so the raster is then scanned once in strips of rows
        and every f-th pixel kept; memory stays bounded by the strip.
        """
        info = self.info
        shape = decimated_shape(info.height, info.width, max_pixels)
        if shape == (info.height, info.width):
            return self.read_window(0, 0, info.height, info.width)
        if self.src.overviews(info.bands[0]):
            return self.read_window(0, 0, info.height, info.width, out_shape=shape)
        f = int(np.ceil(max(info.height / shape[0], info.width / shape[1])))
        return self.read_points(np.arange(0, info.height, f), np.arange(0, info.width, f))

    def read_reduced(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The whole raster point-sampled to ``shape`` (rows, cols), each output pixel the
        input pixel under its centre (GDAL's nearest): (data, valid).

        Through the overviews when the file has them; otherwise one scan in strips
        (:meth:`read_points`): GDAL's decimated read without overviews decodes the blocks
        again and again (8 s for a 1024 x 1024 LZW raster against 0.1 s)."""
        info = self.info
        if shape == (info.height, info.width) or self.src.overviews(info.bands[0]):
            return self.read_window(0, 0, info.height, info.width, out_shape=shape)
        rows = ((np.arange(shape[0]) + 0.5) * (info.height / shape[0])).astype(np.int64)
        cols = ((np.arange(shape[1]) + 0.5) * (info.width / shape[1])).astype(np.int64)
        return self.read_points(np.minimum(rows, info.height - 1), np.minimum(cols, info.width - 1))

    def read_points(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pixels at every (row, col) of the increasing index arrays ``rows`` x ``cols``:
        (data [n, len(rows), len(cols)], valid). One scan of the raster in strips of rows,
        so memory stays bounded by a strip whatever the raster's size."""
        info = self.info
        strip = max(1, STRIP_PIXELS // max(info.width, 1))
        parts, masks = [], []
        for r0 in range(0, info.height, strip):
            r1 = min(info.height, r0 + strip)
            inside = rows[(rows >= r0) & (rows < r1)] - r0
            if not len(inside):
                continue
            data, valid = self.read_window(r0, 0, r1 - r0, info.width)
            parts.append(data[:, inside][:, :, cols])
            masks.append(valid[inside][:, cols])
        return np.concatenate(parts, axis=1), np.concatenate(masks, axis=0)

    def valid_pixels(self, max_pixels: int = STATS_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
        """Every valid pixel of the selected bands (thinned to about ``max_pixels``), from a
        scan in strips, as a one-row image: (data [n, 1, k], valid [1, k]).

        Only used when the regular sample found no valid pixel: a small valid patch can fall
        between its pixels, and such a raster is not empty.
        """
        info = self.info
        rows = max(1, STRIP_PIXELS // max(info.width, 1))
        parts = []
        for r0 in range(0, info.height, rows):
            data, valid = self.read_window(r0, 0, min(rows, info.height - r0), info.width)
            if valid.any():
                parts.append(data[:, valid])
        values = np.concatenate(parts, axis=1) if parts else np.zeros((len(info.bands), 0), np.float64)
        step = max(1, values.shape[1] // max_pixels)
        values = values[:, ::step]
        return values[:, None, :], np.ones((1, values.shape[1]), bool)

    def global_radiometry(self) -> Radiometry:
        """Value ranges from a regular sample of the whole raster (nodata excluded).

        A raster without any valid pixel is refused whatever its type (an all-nodata uint8
        raster would otherwise come out as an all-nodata file, a float one be refused).
        """
        info = self.info
        data, valid = self.sample()
        if not valid.any():
            data, valid = self.valid_pixels()
        if not valid.any():
            raise EngineError(
                f"{info.path.name} has no valid pixel in the selected bands (all nodata or not finite); "
                "nothing to super-resolve: check the nodata value and the bands",
                "input",
            )
        groups = []
        for bands, slots in group_bands(info.bands):
            samples = data[list(slots)][:, valid].astype(np.float64).ravel()
            lo, hi = value_range(info.dtype, samples)
            groups.append(BandGroup(bands, slots, lo, hi))
        return Radiometry(info.dtype, tuple(groups), info.nodata)
