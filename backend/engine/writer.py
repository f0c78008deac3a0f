"""The output: path checks, a temporary GeoTIFF beside the target, block writes, rename.

Nothing ever appears at the output path until the whole raster (and its overviews or COG
layout) is written: the data goes to ``.<name>.<random>.part.tif`` in the target's folder
and is renamed over the target on success; on any error, cancel or Ctrl-C the temporary
files are removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window as RioWindow

from backend.engine.options import EngineError
from backend.engine.plan import Block

OUTPUT_SUFFIXES = (".tif", ".tiff")
BIGTIFF_THRESHOLD = 3_500_000_000
"""Classic TIFF tops out at 4 GiB; above this estimate (with overviews) write BigTIFF."""


def check_paths(input_path: Path, output_path: Path) -> None:
    """Refuse output == input, a non-GeoTIFF name and a missing or unwritable folder."""
    if output_path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise EngineError(f"output {output_path.name} must end with .tif or .tiff (GeoTIFF)")
    same = output_path.resolve() == input_path.resolve()
    if not same and output_path.exists() and input_path.exists():
        same = os.path.samefile(output_path, input_path)
    if same:
        raise EngineError("the output path is the input raster; choose another output file")
    folder = output_path.parent
    if not folder.exists():
        raise EngineError(f"output folder does not exist: {folder}; create it first")
    if not folder.is_dir():
        raise EngineError(f"output folder is not a directory: {folder}")
    if output_path.is_dir():
        raise EngineError(f"output path is a directory: {output_path}; give a file name")
    try:
        fd, probe = tempfile.mkstemp(prefix=".slimdiffsr-probe-", dir=folder)
    except OSError as exc:
        raise EngineError(f"cannot write to {folder} ({exc.strerror}); choose a writable folder") from None
    os.close(fd)
    os.unlink(probe)


def estimate_bytes(width: int, height: int, count: int, dtype: str, overviews: bool, cog: bool) -> int:
    """Worst-case (uncompressed) size of the output, with overviews, and the COG copy."""
    size = width * height * count * np.dtype(dtype).itemsize
    if overviews or cog:
        size = size * 4 // 3
    return size


def check_disk_space(folder: Path, needed: int, cog: bool) -> None:
    """Refuse to start when the target's disk cannot hold the (uncompressed) result."""
    needed_total = needed * (2 if cog else 1)  # a COG is a copy of the finished temporary file
    free = shutil.disk_usage(folder).free
    if free < needed_total:
        raise EngineError(
            f"not enough free disk space in {folder}: the output may need up to {needed_total / 1e9:.2f} GB "
            f"(uncompressed) and {free / 1e9:.2f} GB are free; free space or choose another folder"
        )


DEFLATE_LEVEL = 1
"""DEFLATE effort for the output. GDAL's default (6) cost a quarter of a 1024^2 -> 4096^2
uint16 run on a 2-core CPU (24.3 s against 17.7 s uncompressed); level 1 takes 19.7 s for a
file 6 % larger (51.9 MB against 48.9 MB; 100.7 MB uncompressed). DEFLATE rather than the
slightly faster ZSTD because every GIS reads it."""


def output_profile(src: rasterio.io.DatasetReader, count: int, scale: int, nodata: float | None,
                   compress: str, block: int, bigtiff: bool, threads: str) -> dict[str, Any]:
    dtype = src.dtypes[0]
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": src.width * scale,
        "height": src.height * scale,
        "count": count,
        "dtype": dtype,
        "transform": src.transform * Affine.scale(1 / scale),
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "interleave": "pixel",
        "bigtiff": "YES" if bigtiff else "NO",
        "num_threads": threads,
    }
    if src.crs is not None:
        profile["crs"] = src.crs
    if nodata is not None:
        profile["nodata"] = nodata
    if compress and compress.lower() != "none":
        profile["compress"] = compress
        if compress.lower() in ("deflate", "lzw", "zstd"):
            profile["predictor"] = 3 if np.dtype(dtype).kind == "f" else 2
        if compress.lower() == "deflate":
            profile["zlevel"] = DEFLATE_LEVEL
    return profile


def copy_metadata(src: rasterio.io.DatasetReader, dst: rasterio.io.DatasetWriter, bands: tuple[int, ...],
                  alpha: int | None, provenance: dict[str, str]) -> None:
    """Band descriptions, colour interpretation, units, scales/offsets and tags, plus provenance."""
    out_bands = [*bands, *([alpha] if alpha else [])]
    ci = [src.colorinterp[b - 1] for b in bands]
    if alpha:
        ci.append(ColorInterp.alpha)
    try:
        dst.colorinterp = ci
    except (RasterioError, ValueError):
        pass  # GTiff cannot express every combination; the data are unaffected
    for i, b in enumerate(out_bands, start=1):
        desc = src.descriptions[b - 1]
        if desc:
            dst.set_band_description(i, desc)
        tags = src.tags(b)
        if tags:
            dst.update_tags(i, **tags)
    dst.units = tuple(src.units[b - 1] or "" for b in out_bands)
    dst.scales = tuple(src.scales[b - 1] for b in out_bands)
    dst.offsets = tuple(src.offsets[b - 1] for b in out_bands)
    tags = dict(src.tags())
    tags.update(provenance)
    dst.update_tags(**tags)


class TempOutput:
    """A temporary GeoTIFF beside ``target``; :meth:`commit` renames, :meth:`discard` removes."""

    def __init__(self, target: Path) -> None:
        self.target = target
        token = uuid.uuid4().hex[:8]
        self.path = target.with_name(f".{target.stem}.{token}.part.tif")
        self._extra: list[Path] = []

    def side_file(self, suffix: str) -> Path:
        p = self.path.with_name(self.path.stem + suffix)
        self._extra.append(p)
        return p

    def discard(self) -> None:
        for p in (self.path, *self._extra):
            for candidate in (p, p.with_name(p.name + ".aux.xml"), p.with_name(p.name + ".ovr")):
                try:
                    candidate.unlink()
                except FileNotFoundError:
                    pass
                except OSError:
                    pass

    def finish(self, overviews: bool, cog: bool, compress: str, block: int, bigtiff: bool) -> None:
        """Overviews and COG layout on the finished temporary file, then rename over the target."""
        final = self.path
        try:
            if overviews or cog:
                with rasterio.open(self.path, "r+") as ds:
                    factors = overview_factors(ds.width, ds.height, block)
                    if factors:
                        ds.build_overviews(factors, Resampling.average)
                        ds.update_tags(ns="rio_overview", resampling="average")
            if cog:
                final = self.side_file(".cog.tif")
                rasterio.shutil.copy(
                    self.path, final, driver="COG", compress=compress or "deflate", blocksize=block,
                    overviews="FORCE_USE_EXISTING", bigtiff="YES" if bigtiff else "IF_SAFER",
                    num_threads="ALL_CPUS",
                )
        except RasterioError as exc:
            raise EngineError(f"finishing the output failed ({str(exc).splitlines()[0][:200]})") from None
        os.replace(final, self.target)
        self.discard()


def overview_factors(width: int, height: int, block: int) -> list[int]:
    """2, 4, 8, ... until the smallest level fits in one block."""
    factors, f = [], 2
    while max(width, height) / f >= block / 2 and f <= 1024:
        factors.append(f)
        f *= 2
    return factors or [2]


def write_block(dst: rasterio.io.DatasetWriter, block: Block, data: np.ndarray, alpha: np.ndarray | None,
                mask: np.ndarray | None) -> None:
    win = RioWindow(block.x0, block.y0, block.width, block.height)
    n = data.shape[0]
    dst.write(data, indexes=list(range(1, n + 1)), window=win)
    if alpha is not None:
        dst.write(alpha.astype(dst.dtypes[n]), indexes=n + 1, window=win)
    if mask is not None:
        dst.write_mask(np.where(mask, 255, 0).astype(np.uint8), window=win)


def upsample_nearest(a: np.ndarray, scale: int, block: Block, origin: tuple[int, int]) -> np.ndarray:
    """Nearest x``scale`` of the input pixels under ``block``; ``origin`` = their (row, col) offset."""
    up = np.repeat(np.repeat(a, scale, axis=-2), scale, axis=-1)
    oy, ox = block.y0 - origin[0] * scale, block.x0 - origin[1] * scale
    return up[..., oy : oy + block.height, ox : ox + block.width]
