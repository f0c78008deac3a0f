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
            profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
                       "crs": src.crs, "transform": src.window_transform(win)}
        path = tmp_path / name
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        return path, data

    return make
