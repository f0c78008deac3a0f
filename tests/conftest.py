"""Shared test fixtures: real data from ../shared (skipped when absent) and tiny students."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# tests/pyqgis runs inside QGIS's own Python (make test-qgis), with QGIS started in-process by
# pytest-qgis; the backend environment has no QGIS (and must not: see plugin/worker_client.py).
collect_ignore = [] if importlib.util.find_spec("qgis") else ["pyqgis"]


# -- markers: what `make test-fast` leaves out -----------------------------------------------------

# Tests in files whose own marks do not say it: a prefix of the node id -> marker. `train`:
# needs the training extras (requirements-train.txt); `slow`: minutes, or makes environments.
MARKS_BY_NODE = {
    "tests/test_training_distill.py": "train",
    "tests/test_training_trainer.py::test_finetune_validates_before_and_after": "train",
    "tests/test_backend_env.py": "slow",
    "tests/test_cluster.py": "slow",  # starts a dask scheduler and workers
    "tests/test_default_model.py": "slow",  # evaluates the bundled models, finalizes a run
    "tests/test_faults.py": "slow",  # most start the CLI: a Python with torch each
    "tests/test_runtime.py": "slow",  # ONNX exports, OpenVINO compiles, int8 calibration
    "tests/test_tile_invariance.py": "slow",  # the paper's student at several tile sizes
    "tests/test_inference.py::test_super_resolve_reproduces_release_pipeline": "slow",
    "tests/test_model_parity.py::test_forward_matches_independent_reference[paper-student]": "slow",
    "tests/pyqgis/": "qgis",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks by node id (:data:`MARKS_BY_NODE`), and `root` on every test that mounts a tmpfs
    (the ``tmpfs`` fixture: needs root, and skips without it)."""
    for item in items:
        for prefix, mark in MARKS_BY_NODE.items():
            if item.nodeid.startswith(prefix):
                item.add_marker(mark)
        if "tmpfs" in getattr(item, "fixturenames", ()):
            item.add_marker("root")


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


def tiny_student_config():
    """A compact member of the student family: same modules, small widths, fast on CPU."""
    import dataclasses

    from backend.model.config import TINY_STUDENT

    return dataclasses.replace(TINY_STUDENT, input_residual=False)


def write_tiny_weights(path: Path) -> Path:
    """A self-describing x4 .safetensors file of :func:`tiny_student_config` with seeded
    random weights."""
    import torch

    from backend.model import SlimDiffSRStudent
    from backend.weights import save_safetensors

    torch.manual_seed(0)
    return save_safetensors(SlimDiffSRStudent(tiny_student_config()), path, 4, name="tiny test model")


@pytest.fixture(scope="session")
def tiny_config():
    return tiny_student_config()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`write_tiny_weights`, once per session (tests only read it)."""
    return write_tiny_weights(tmp_path_factory.mktemp("tiny") / "tiny_x4.safetensors")


@pytest.fixture(scope="session")
def nano_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Scale -> seeded random weights of the nano student (x2 and x4): the fastest model
    that still has every module, for tests of the engine rather than of the picture."""
    from devtools.compact import NANO, write_random_weights

    folder = tmp_path_factory.mktemp("nano")
    return {s: write_random_weights(folder / f"nano_x{s}.safetensors", NANO, s) for s in (2, 4)}


@pytest.fixture(scope="session")
def nano_x4(nano_weights: dict[int, Path]) -> Path:
    return nano_weights[4]


def crop_raster(
    source: Path, path: Path, window, bands: list[int] | None = None, **creation
) -> tuple[Path, object]:
    """Cut ``window`` (a rasterio Window) of ``bands`` (default all) out of a real raster into
    ``path``, keeping its CRS with the window's transform -> (path, data). Small crops of the
    shared fixtures keep tests on real imagery fast."""
    import rasterio

    with rasterio.open(source) as src:
        data = src.read(bands, window=window)
        crs, transform = src.crs, src.window_transform(window)
    return write_raster(path, data, crs=crs, transform=transform, **creation), data


@pytest.fixture()
def rgb_crop(fixtures_dir: Path, tmp_path: Path):
    """``make(size, name)`` -> (path, data): a georeferenced 3-band uint8 crop of the real
    orthophoto (a fully opaque area) written to ``tmp_path``."""
    from rasterio.windows import Window

    def make(size: int, name: str = "rgb.tif"):
        orthophoto = fixtures_dir / "webodm/orthophoto.tif"
        return crop_raster(orthophoto, tmp_path / name, Window(0, 0, size, size), [1, 2, 3])

    return make


# -- rasters, checksums and file systems ----------------------------------------------------------


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


# A projected CRS with no EPSG code: an output must carry the same WKT, not a guessed code.
CUSTOM_WKT = (
    'PROJCS["unnamed",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
    'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Albers_Conic_Equal_Area"],'
    'PARAMETER["latitude_of_center",23],PARAMETER["longitude_of_center",-96],'
    'PARAMETER["standard_parallel_1",29.5],PARAMETER["standard_parallel_2",45.5],'
    'PARAMETER["false_easting",0],PARAMETER["false_northing",0],UNIT["metre",1]]'
)


def plugin_rasters(folder: Path) -> dict[str, Path]:
    """The plugin tests' inputs: "custom", 3-band uint16 48x40 in :data:`CUSTOM_WKT`; "utm",
    4-band uint16 40x48 in UTM 21N (not square, so that swapped axes show)."""
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    custom = random_rgb((48, 40), seed=1, dtype="uint16")
    utm = random_rgb((40, 48), seed=2, dtype="uint16", bands=4)
    return {
        "custom": write_raster(
            folder / "custom_crs.tif",
            custom,
            crs=CRS.from_wkt(CUSTOM_WKT),
            transform=from_origin(-1_200_000, 1_800_000, 10, 10),
        ),
        "utm": write_raster(
            folder / "utm_4band.tif", utm, crs="EPSG:32621", transform=from_origin(500_000, 7_200_000, 30, 30)
        ),
    }


def random_rgb(size: int | tuple[int, int] = 64, seed: int = 0, dtype: str = "uint8", bands: int = 3):
    """A smooth image with noise (compressible like a real scene), ``size`` pixels square or
    (height, width), values in 0..255 whatever ``dtype``."""
    import numpy as np

    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / 9.0
    base = np.stack([np.sin(x + k) * np.cos(y / (k + 1)) for k in range(bands)]) * 90 + 128
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
