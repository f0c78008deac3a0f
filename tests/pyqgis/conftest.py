"""In-process QGIS: the plugin loaded into a QGIS 3.22 application in the test process, as the
desktop loads it (pytest-qgis starts QGIS and Processing). Runs in the plugin side's test
environment (``make test-qgis``: Debian's python3 with QGIS, no torch); the backend work goes
to the real worker in the backend environment, as for users.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
BACKEND_PYTHON = Path(os.environ.get("SLIMDIFFSR_BACKEND_PYTHON", ROOT / ".venv" / "bin" / "python"))


def import_plugin(plugins: Path, name: str) -> ModuleType:
    """Import the plugin package ``plugins/name`` as QGIS does (its folder on sys.path)."""
    if str(plugins) not in sys.path:
        sys.path.insert(0, str(plugins))
    return importlib.import_module(name)


def plugin_copy(bare: Path) -> Path:
    """The plugin as unzipped, without a backend environment: its code (plugin, backend),
    resources without the weights, the entry files."""
    skip = shutil.ignore_patterns("__pycache__", "weights")
    for folder in ("plugin", "backend", "resources"):
        shutil.copytree(ROOT / folder, bare / folder, ignore=skip)
    for name in ("__init__.py", "metadata.txt"):
        shutil.copy(ROOT / name, bare / name)
    return bare


@pytest.fixture(scope="session")
def plugin(qgis_app, qgis_processing, tmp_path_factory: pytest.TempPathFactory):
    """The plugin from this repository (a ``slimdiffsr`` link, as ``make install`` makes),
    its provider registered; its worker is the repository's .venv."""
    if os.environ.get("SLIMDIFFSR_PYTHON"):
        pytest.fail("unset SLIMDIFFSR_PYTHON: these tests choose the backend themselves")
    plugins = tmp_path_factory.mktemp("plugins")
    (plugins / "slimdiffsr").symlink_to(ROOT, target_is_directory=True)
    instance = import_plugin(plugins, "slimdiffsr").classFactory(None)
    instance.initProcessing()
    yield instance
    instance.unload()


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Test rasters and tiny weights (tests/conftest.py's), written by the backend's Python."""
    if not BACKEND_PYTHON.is_file():
        pytest.skip(f"no backend environment at {BACKEND_PYTHON} (make install)")
    folder = tmp_path_factory.mktemp("data")
    proc = subprocess.run(
        [str(BACKEND_PYTHON), str(Path(__file__).with_name("make_data.py")), str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: Path(path) for name, path in json.loads(proc.stdout).items()}


def raster_info(path: Path | str) -> tuple[int, int, int, str, str]:
    """(width, height, bands, CRS WKT, data type name) of a raster, through QGIS."""
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(str(path), "raster")
    assert layer.isValid(), path
    provider = layer.dataProvider()
    return layer.width(), layer.height(), layer.bandCount(), layer.crs().toWkt(), str(provider.dataType(1))


def assert_upscaled(src: Path | str, dst: Path | str, scale: int, bands: int) -> None:
    """``dst`` is ``src`` ``scale`` times finer over the same extent, CRS and data type."""
    from qgis.core import QgsRasterLayer

    (sw, sh, _, s_crs, s_type), (dw, dh, dn, d_crs, d_type) = raster_info(src), raster_info(dst)
    assert (dw, dh, dn) == (sw * scale, sh * scale, bands)
    assert d_crs == s_crs and d_type == s_type
    s_extent, d_extent = QgsRasterLayer(str(src)).extent(), QgsRasterLayer(str(dst)).extent()
    assert d_extent.toString(6) == s_extent.toString(6)
