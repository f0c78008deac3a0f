"""Writes the in-process QGIS tests' inputs with the backend environment's Python.

The QGIS test environment has QGIS but no torch or rasterio (as a QGIS user's Python), so
its session fixture runs ``<backend python> make_data.py FOLDER``, which writes the shared
test rasters and tiny weights (tests/conftest.py) into FOLDER and prints name -> path as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(TESTS), str(TESTS.parent)]

from conftest import plugin_rasters, random_rgb, write_raster, write_tiny_weights  # noqa: E402


def main(folder: Path) -> dict[str, str]:
    files = plugin_rasters(folder)
    files["big"] = write_raster(folder / "big.tif", random_rgb(512, seed=4))
    files["weights"] = write_tiny_weights(folder / "tiny_x4.safetensors")
    return {name: str(path) for name, path in files.items()}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
