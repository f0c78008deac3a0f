"""Inputs for measurements and tests: the shared data folder, synthetic images and rasters.

Rasters are written with real GDAL (rasterio); rasterio and affine are imported inside the
functions so that ``tools/gpu_check.py`` can still use the synthetic images on a GPU host
that lacks them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rasterio.crs import CRS

REFERENCE_SCENE = "data/fixtures/rasterio/RGB.byte.tif"
"""A real aerial scene in the shared folder: what the receptive margin is measured on."""


def shared_dir(explicit: str | Path | None = None) -> Path | None:
    """The project's shared data folder: ``explicit``, else $SLIMDIFFSR_SHARED (the Makefile
    exports it), else None.

    Never guessed from where the checkout lies: a measurement recorded in shipped weights
    must not change with whatever happens to sit next to the repository.
    """
    value = explicit or os.environ.get("SLIMDIFFSR_SHARED")
    return Path(value) if value else None


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """[3, size, size] float32 in [0, 1]: a smooth image-like pattern with seeded noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(9 * xx + c) * np.cos(7 * yy - c) for c in range(3)]) * 0.3 + 0.5
    noise = 0.03 * rng.standard_normal((size, size, 3)).transpose(2, 0, 1)
    return np.clip(base + noise, 0, 1).astype(np.float32)


def reference_image(size: int, shared: str | Path | None = None) -> np.ndarray:
    """[3, size, size] float32 in [0, 1]: a crop of ``REFERENCE_SCENE`` in ``shared_dir(shared)``.

    No synthetic stand-in: a margin measured on other content would be another number.
    """
    import rasterio

    folder = shared_dir(shared)
    if folder is None:
        raise FileNotFoundError("no shared data folder: pass one or set SLIMDIFFSR_SHARED")
    path = folder / REFERENCE_SCENE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (the reference scene of the margin measurement)")
    with rasterio.open(path) as src:
        a = src.read([1, 2, 3], window=((250, 250 + size), (250, 250 + size)))
    return a.astype(np.float32) / 255


def geotiff_profile(
    width: int,
    height: int,
    count: int = 3,
    dtype: str = "uint8",
    *,
    crs: str | CRS | None = "EPSG:32633",
    transform: Any = None,
    nodata: float | None = None,
    driver: str = "GTiff",
    **creation: Any,
) -> dict[str, Any]:
    """A rasterio profile: georeferenced (10 m UTM pixels unless ``transform`` is given)
    unless ``crs`` is None; ``creation``: extra creation options (tiled, compress...)."""
    from affine import Affine

    profile: dict[str, Any] = {
        "driver": driver,
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        **creation,
    }
    if crs is not None:
        profile["crs"] = crs
        profile["transform"] = transform or Affine(10, 0, 500000, 0, -10, 5000000)
    if nodata is not None:
        profile["nodata"] = nodata
    return profile


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | CRS | None = "EPSG:32633",
    transform: Any = None,
    nodata: float | None = None,
    driver: str = "GTiff",
    **creation: Any,
) -> Path:
    """Write ``data`` ([bands, h, w], its dtype) as a raster; see ``geotiff_profile``."""
    import rasterio

    bands, h, w = data.shape
    profile = geotiff_profile(
        w, h, bands, data.dtype.name, crs=crs, transform=transform, nodata=nodata, driver=driver, **creation
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def synthetic_raster(path: Path, size: int, valid_rows: int | None = None, seed: int = 0) -> Path:
    """A georeferenced 3-band uint8 GeoTIFF with image-like content, written block by block.

    ``valid_rows``: only the first rows hold data, the rest is nodata (0); this keeps a
    huge raster cheap to process while its full width still goes through the blender.
    """
    import rasterio
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    profile = geotiff_profile(
        size,
        size,
        nodata=0 if valid_rows is not None else None,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    base = rng.integers(1, 255, size=(3, 64, 64)).astype(np.float32)
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, size, 256):
            h = min(256, size - y)
            yy = (np.arange(y, y + h)[:, None] / 7.3) % 64
            xx = (np.arange(size)[None, :] / 5.1) % 64
            tile = base[:, yy.astype(int), xx.astype(int)]
            tile = np.clip(tile + rng.normal(0, 8, tile.shape), 1, 255).astype(np.uint8)
            if valid_rows is not None and y + h > valid_rows:
                tile[:, max(0, valid_rows - y) :, :] = 0
            dst.write(tile, window=Window(0, y, size, h))
    return path
