"""Shared test fixtures: real data from ../shared (skipped when absent) and tiny students."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _shared_dir() -> Path:
    return Path(os.environ.get("SLIMDIFFSR_SHARED", ROOT.parent / "shared")).resolve()


# The code under test takes the shared folder from $SLIMDIFFSR_SHARED (the Makefile exports
# it; devtools never guesses it): a bare pytest run hands it the folder the fixtures use.
os.environ.setdefault("SLIMDIFFSR_SHARED", str(_shared_dir()))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip: users' machines do not have the project's shared data."""
    data = _shared_dir() / "data"
    if not (data / "fixtures").is_dir():
        pytest.skip(f"shared data not found at {data} (only present on development and CI machines)")
    return data


@pytest.fixture(scope="session")
def fixtures_dir(shared_data: Path) -> Path:
    return shared_data / "fixtures"


@pytest.fixture(scope="session")
def tiny_config():
    """A compact member of the student family: same modules, small widths, fast on CPU."""
    import dataclasses

    from backend.model.config import TINY_STUDENT

    return dataclasses.replace(TINY_STUDENT, input_residual=False)


@pytest.fixture()
def tiny_weights(tmp_path: Path, tiny_config) -> Path:
    """A self-describing x4 .safetensors file with seeded random weights."""
    import torch

    from backend.model import SlimDiffSRStudent
    from backend.weights import save_safetensors

    torch.manual_seed(0)
    model = SlimDiffSRStudent(tiny_config)
    return save_safetensors(model, tmp_path / "tiny_x4.safetensors", 4, name="tiny test model")


@pytest.fixture()
def rgb_crop(fixtures_dir: Path, tmp_path: Path):
    """``make(size, name)`` -> (path, data): a georeferenced 3-band uint8 crop of the real
    orthophoto (a fully opaque area) written to ``tmp_path``."""
    import rasterio

    def make(size: int, name: str = "rgb.tif"):
        with rasterio.open(fixtures_dir / "webodm/orthophoto.tif") as src:
            win = rasterio.windows.Window(0, 0, size, size)
            data = src.read([1, 2, 3], window=win)
            profile = {
                "driver": "GTiff",
                "width": size,
                "height": size,
                "count": 3,
                "dtype": "uint8",
                "crs": src.crs,
                "transform": src.window_transform(win),
            }
        path = tmp_path / name
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        return path, data

    return make


# -- rasters, checksums and file systems for the fault tests -------------------------------------


def write_raster(
    path: Path,
    data,
    *,
    crs: str | None = "EPSG:32633",
    transform=None,
    nodata=None,
    driver: str = "GTiff",
    **creation,
) -> Path:
    """Write ``data`` ([bands, h, w], its dtype) as a raster; georeferenced unless ``crs`` and
    ``transform`` are None."""
    import rasterio
    from affine import Affine

    bands, h, w = data.shape
    profile = {
        "driver": driver,
        "width": w,
        "height": h,
        "count": bands,
        "dtype": data.dtype.name,
        **creation,
    }
    if crs is not None:
        profile["crs"] = crs
        profile["transform"] = transform or Affine(10, 0, 500000, 0, -10, 5000000)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def random_rgb(size: int = 64, seed: int = 0, dtype: str = "uint8"):
    """A smooth 3-band image with noise (compressible like a real scene), ``size`` pixels square."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / 9.0
    base = np.stack([np.sin(x + k) * np.cos(y / (k + 1)) for k in range(3)]) * 90 + 128
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(dtype)


def folder_state(*folders: Path) -> dict[str, str]:
    """Every file under ``folders`` (hidden ones included) -> its SHA-256: comparing two states
    checks at once that inputs are unchanged, old outputs kept and nothing was left behind."""
    import hashlib

    state = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and not p.is_symlink():
                state[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return state


@pytest.fixture()
def tmpfs(tmp_path: Path):
    """``mount(name, size, readonly=False)`` -> a folder on a fresh tmpfs of ``size`` (e.g.
    "4m"); unmounted after the test. Skips when mounting is not allowed here (not root, a
    container without CAP_SYS_ADMIN)."""
    import subprocess

    mounted: list[Path] = []

    def mount(name: str, size: str, readonly: bool = False) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        opts = f"size={size}" + (",ro" if readonly else "")
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True, text=True
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip()[:120]})")
        mounted.append(folder)
        return folder

    try:
        yield mount
    finally:
        for folder in reversed(mounted):
            if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill_disk(folder: Path) -> Path:
    """Write zeros into ``folder/fill`` until its file system is full."""
    import errno

    path = folder / "fill"
    chunk = bytes(4096)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return path
