"""Training pairs from folders of rasters: HR crops read through windows, in [0, 1].

One path for every raster a user might have (GeoTIFF, PNG, JPEG; any size, dtype and
band count): scan -> per-file radiometry and band choice (computed once) -> seeded
random window -> rasterio windowed read -> nodata rejection -> dihedral augmentation.

Choices that are ours (the paper trains on AID, 8-bit RGB photographs, where none of this
arises):

* radiometry: uint8 is divided by 255; every other dtype is stretched with one low/high
  pair per file, the percentiles of :mod:`backend.radiometry` (the engine's) of the valid
  pixels of the chosen bands pooled together (a shared stretch keeps the colour balance
  between bands), computed once from a decimated read so a huge file costs one small read;
* bands: red/green/blue by colour interpretation, else the first three bands; a 1- or
  2-band raster uses its first band three times (the student is an RGB network);
* nodata: the dataset's own mask (nodata value, alpha band, internal mask) plus pixels
  that are zero in every chosen band (satellite scenes often carry an undeclared zero
  collar); a crop with more than ``max_invalid`` invalid pixels is redrawn;
* sampling: by default a file is drawn with probability proportional to its area, so
  every pixel of the collection is about equally likely; ``sampling="sqrt-area"`` draws
  it in proportion to the square root of its area instead, so that a few large files
  (or many frames of one scene) do not crowd out many small distinct scenes; sample
  ``i`` depends only on ``(seed, i)``, which makes a training run's data stream
  reproducible and resumable without saving any loader state;
* colour (``colour_augment``, off by default): with that probability a crop's bands are
  reordered, turned grey, given a gamma and a lower contrast (:func:`recolour`), so that a
  network trained on a few sensors' colour statistics meets other sensors' without
  having learned their band correlations by heart;
* ground sampling distance (``zoom_out``, off by default): half the crops are read from a
  window up to that many times larger and reduced to the crop size with an antialiased
  bicubic filter, as if the same ground were imaged at a coarser GSD: structures become
  smaller and denser (what a 0.3 m city block looks like after a 0.1 m forest plot), and
  the HR gets sharper, as a different sensor's would.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from torch.utils.data import Dataset

from backend.radiometry import stretch_range, to_unit
from backend.training.settings import SAMPLINGS

RASTER_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".img", ".vrt")
STATS_MAX_SIDE = 1024


class DataError(ValueError):
    """Training data that cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class RasterSource:
    """What the sampler needs to know about one file, computed once."""

    path: str
    width: int
    height: int
    bands: tuple[int, int, int]
    low: float
    high: float
    itemsize: int = 8
    """Bytes per value of the chosen bands (the in-memory cache's size estimate)."""

    @property
    def area(self) -> int:
        return self.width * self.height

    def to_unit(self, values: np.ndarray) -> np.ndarray:
        """Raw values -> float32 in [0, 1] with this file's stretch."""
        return to_unit(values, self.low, self.high)


def find_rasters(paths: Sequence[str | Path]) -> list[Path]:
    """Files with a raster suffix under the given folders (recursive) or given directly."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += [f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES]
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f"training data path not found: {p}")
    return sorted(set(found))


def choose_bands(colorinterp: Sequence[ColorInterp]) -> tuple[int, int, int]:
    """1-based band indices read as R, G, B (see the module docstring)."""
    interp = list(colorinterp)
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(c in interp for c in wanted):
        r, g, b = (interp.index(c) + 1 for c in wanted)
        return (r, g, b)
    if len(interp) >= 3:
        return (1, 2, 3)
    return (1, 1, 1)


def _valid_mask(
    ds: rasterio.io.DatasetReader,
    bands: tuple[int, ...],
    values: np.ndarray,
    window: Window | None = None,
    out_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """True where every chosen band is valid and not all chosen bands are zero."""
    unique = sorted(set(bands))
    kw = {"window": window}
    if out_shape is not None:
        kw["out_shape"] = (len(unique), *out_shape)
    masks = ds.read_masks(unique, **kw)
    valid = np.all(masks > 0, axis=0)
    return valid & np.any(values != 0, axis=0)


def describe_raster(path: str | Path) -> RasterSource:
    """Open ``path`` once: size, band choice and radiometric stretch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            ds = rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            raise DataError(f"{path}: not a readable raster ({exc})") from None
        with ds:
            bands = choose_bands(ds.colorinterp)
            dtype = np.dtype(ds.dtypes[bands[0] - 1])
            stretch: tuple[float, float] | None = (0.0, 255.0)
            if dtype != np.uint8:
                factor = max(ds.width, ds.height) / STATS_MAX_SIDE
                shape = (max(1, round(ds.height / max(factor, 1))), max(1, round(ds.width / max(factor, 1))))
                unique = sorted(set(bands))
                values = ds.read(unique, out_shape=(len(unique), *shape), resampling=Resampling.nearest)
                valid = _valid_mask(ds, bands, values, out_shape=shape)
                stretch = stretch_range(dtype, values[:, valid])
            if stretch is None:
                raise DataError(f"{path}: no valid pixels in bands {bands}")
            low, high = stretch
            return RasterSource(str(path), ds.width, ds.height, bands, low, high, dtype.itemsize)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flips/rotations of the square (k in 0..7) on the last two dims."""
    if k & 4:
        x = x.flip(-1)
    return torch.rot90(x, k & 3, dims=(-2, -1))


LUMA = (0.299, 0.587, 0.114)


def recolour(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random photometric variant of a ``[3, H, W]`` crop in [0, 1], still in [0, 1].

    The variants are what other sensors and products look like, not colour noise: band
    order (false-colour composites, BGR products), a single band repeated (panchromatic
    imagery, as the engine feeds it), a gamma of 0.7-1.4 (other stretches) and a contrast
    lowered to 0.6-1 of the original at a random offset (haze, a wide radiometric range
    stretched for display). Every map is smooth and monotone per band, so the HR crop
    stays a plausible sharp image and the LR synthesis applies to it unchanged; the
    contrast is only lowered because raising it would clip.
    """
    x = x[rng.permutation(3)]
    if rng.random() < 0.25:
        grey = np.tensordot(np.asarray(LUMA, dtype=x.dtype), x, axes=1)
        x = np.broadcast_to(grey, x.shape)
    x = np.power(np.clip(x, 0.0, 1.0), np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
    contrast = rng.uniform(0.6, 1.0)
    return (contrast * x + rng.uniform(0.0, 1.0 - contrast)).astype(np.float32)


def stable_split(paths: Sequence[Path], val_fraction: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Hold out about ``val_fraction`` of the files, chosen by a hash of their names.

    Hashing the name (not the list position) keeps a file on the same side when files are
    added to the folder later; at least one file goes to each side when possible.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError("val_fraction must be in [0, 1)")

    def score(p: Path) -> float:
        digest = hashlib.sha256(f"{seed}:{p.name}:{p.parent.name}".encode()).digest()
        return int.from_bytes(digest[:8], "little") / 2**64

    ranked = sorted(paths, key=score)
    n_val = round(len(ranked) * val_fraction)
    if val_fraction > 0 and len(ranked) >= 2:
        n_val = min(max(n_val, 1), len(ranked) - 1)
    val = sorted(ranked[:n_val])
    return sorted(ranked[n_val:]), val


class RasterCropDataset(Dataset):
    """Seeded HR crops ``[3, crop, crop]`` in [0, 1] from a list of rasters.

    ``len`` is a virtual epoch (``length``); item ``i`` is a pure function of
    ``(seed, i)``. Files smaller than the crop are skipped with a warning.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        crop: int,
        *,
        seed: int = 0,
        augment: bool = True,
        max_invalid: float = 0.01,
        length: int = 1_000_000,
        max_tries: int = 20,
        cache_mb: float = 1024.0,
        sampling: str = "area",
        colour_augment: float = 0.0,
        zoom_out: float = 1.0,
    ) -> None:
        if not 0.0 <= colour_augment <= 1.0:
            raise DataError("colour_augment must be a probability in [0, 1]")
        if zoom_out < 1.0:
            raise DataError("zoom_out must be at least 1 (1: crops at the file's own GSD)")
        if sampling not in SAMPLINGS:
            raise DataError(f"sampling must be one of {', '.join(SAMPLINGS)}, not {sampling!r}")
        self.crop = int(crop)
        self.seed = int(seed)
        self.augment = augment
        self.colour_augment = float(colour_augment) if augment else 0.0
        self.zoom_out = float(zoom_out) if augment else 1.0
        self.max_invalid = float(max_invalid)
        self.length = int(length)
        self.max_tries = int(max_tries)
        sources = [describe_raster(p) for p in paths]
        self.skipped = [s.path for s in sources if min(s.width, s.height) < self.crop]
        self.sources = [s for s in sources if min(s.width, s.height) >= self.crop]
        if not self.sources:
            raise DataError(
                f"no raster of at least {self.crop}x{self.crop} pixels among {len(sources)} files"
            )
        areas = np.array([s.area for s in self.sources], dtype=np.float64)
        shares = np.sqrt(areas) if sampling == "sqrt-area" else areas
        self.weights = shares / shares.sum()
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._cached_bytes = 0
        self._uncached: set[str] = set()

    def __len__(self) -> int:
        return self.length

    def _read(self, source: RasterSource, window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Chosen bands and their validity, of ``window`` or of the whole file."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(source.path) as ds:
                values = ds.read(list(source.bands), window=window)
                valid = _valid_mask(ds, source.bands, values, window=window)
        valid &= np.all(np.isfinite(values), axis=0)
        return values, valid

    def _whole_file(self, source: RasterSource) -> tuple[np.ndarray, np.ndarray] | None:
        """The chosen bands and validity of a whole file, kept while they fit the budget.

        Opening a compressed GeoTIFF and decoding its blocks for every crop cost about a
        quarter of a CPU training step; small collections (the usual fine-tuning case) are
        read once instead. A file beyond the budget is marked once and keeps windowed reads,
        so a folder of huge scenes never has to fit in memory. Each loader process has its
        own cache.
        """
        hit = self._cache.get(source.path)
        if hit is not None or source.path in self._uncached:
            return hit
        if self._cached_bytes + source.area * (len(source.bands) * source.itemsize + 1) > self.cache_bytes:
            self._uncached.add(source.path)
            return None
        values, valid = self._cache[source.path] = self._read(source)
        self._cached_bytes += values.nbytes + valid.nbytes
        return values, valid

    def read_crop(
        self, source: RasterSource, top: int, left: int, size: int | None = None
    ) -> tuple[np.ndarray, float]:
        """A square window of ``size`` (the crop) -> (float32 [3, size, size] in [0, 1], invalid share)."""
        size = size or self.crop
        whole = self._whole_file(source)
        if whole is not None:
            rows, cols = slice(top, top + size), slice(left, left + size)
            values, valid = whole[0][:, rows, cols], whole[1][rows, cols]
        else:
            values, valid = self._read(source, Window(left, top, size, size))
        return source.to_unit(np.nan_to_num(values)), 1.0 - float(valid.mean())

    def _window_size(self, source: RasterSource, rng: np.random.Generator) -> int:
        """The side of the window read for one crop: the crop itself, or up to ``zoom_out`` times it."""
        if self.zoom_out <= 1.0 or rng.random() < 0.5:
            return self.crop
        largest = min(self.zoom_out * self.crop, source.width, source.height)
        return round(rng.uniform(self.crop, largest))

    def _to_crop_size(self, values: np.ndarray) -> np.ndarray:
        """A larger window reduced to the crop size (antialiased bicubic, clamped to [0, 1])."""
        if values.shape[-1] == self.crop:
            return values
        small = torch.nn.functional.interpolate(
            torch.from_numpy(values)[None], size=(self.crop, self.crop), mode="bicubic", antialias=True
        )
        return small[0].clamp_(0.0, 1.0).numpy()

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, int(index)])
        for _ in range(self.max_tries):
            source = self.sources[int(rng.choice(len(self.sources), p=self.weights))]
            size = self._window_size(source, rng)
            top = int(rng.integers(0, source.height - size + 1))
            left = int(rng.integers(0, source.width - size + 1))
            k = int(rng.integers(0, 8))
            crop, invalid = self.read_crop(source, top, left, size)
            if invalid <= self.max_invalid:
                crop = self._to_crop_size(crop)
                # Drawn after the window, so crops without it are the same as before.
                recoloured = self.colour_augment > 0 and rng.random() < self.colour_augment
                x = torch.from_numpy(recolour(crop, rng) if recoloured else crop)
                return dihedral(x, k).contiguous() if self.augment else x
        # Mostly-empty collections still train: keep the last crop rather than fail.
        return torch.from_numpy(self._to_crop_size(crop))


class FixedCrops(Dataset):
    """Validation crops: ``per_file`` seeded windows of each file, no augmentation.

    The same files, windows and values on every call, so validation numbers of different
    steps and of resumed runs are comparable.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        crop: int,
        per_file: int = 2,
        seed: int = 12345,
        max_invalid: float = 0.01,
    ) -> None:
        base = RasterCropDataset(paths, crop, seed=seed, augment=False, max_invalid=max_invalid, length=1)
        self.crops: list[torch.Tensor] = []
        for n, source in enumerate(base.sources):
            rng = np.random.default_rng([seed, n])
            kept = 0
            for _ in range(per_file * 10):
                top = int(rng.integers(0, source.height - crop + 1))
                left = int(rng.integers(0, source.width - crop + 1))
                values, invalid = base.read_crop(source, top, left)
                if invalid <= max_invalid:
                    self.crops.append(torch.from_numpy(values))
                    kept += 1
                    if kept == per_file:
                        break
        if not self.crops:
            raise DataError("no valid validation crop could be read")
        self.files = [s.path for s in base.sources]

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.crops[index]
