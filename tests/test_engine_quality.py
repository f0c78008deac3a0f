"""Numerical behaviour: single-tile equivalence with the release pipeline, seams, skipping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import write_raster

from backend.engine import UpscaleOptions, make_plan, upscale_raster
from backend.inference import SuperResolver
from backend.weights import load_weights
from devtools.bench_engine import seam_ratio
from devtools.compact import TINY, write_random_weights


@pytest.fixture()
def resolver(tiny_weights: Path) -> SuperResolver:
    """The shared tiny student, exactly as the release builds it (no input residual)."""
    loaded = load_weights(tiny_weights)
    return SuperResolver(loaded.model, loaded.scale, "cpu", "fp32")


@pytest.fixture()
def residual(tmp_path: Path) -> SuperResolver:
    """A tiny student with the input residual: random weights that still output an image
    (a random network without it outputs a nearly flat image whose colour match amplifies
    every tile-to-tile difference many times, unlike a trained model)."""
    loaded = load_weights(write_random_weights(tmp_path / "tiny_res.safetensors", TINY, 4))
    return SuperResolver(loaded.model, loaded.scale, "cpu", "fp32")


@pytest.mark.parametrize("color_match", [True, False])
def test_one_tile_equals_the_release_pipeline(
    rgb_crop, tmp_path: Path, resolver: SuperResolver, color_match: bool
) -> None:
    resolver.color_match = color_match  # weights may ship with ``color_match: false``
    src, data = rgb_crop(64)
    report = upscale_raster(src, tmp_path / "out.tif", resolver, UpscaleOptions(tile_size=64, overlap=8))
    assert report.tiles == 1
    with rasterio.open(tmp_path / "out.tif") as dst:
        engine = dst.read().astype(np.int32)
    lr = data.transpose(1, 2, 0).astype(np.float32) / 255
    expected = resolver.super_resolve(lr, pad_multiple=resolver.multiple)  # 256x256: no padding at all
    expected = np.rint(expected * 255).astype(np.int32).transpose(2, 0, 1)
    assert np.abs(engine - expected).max() <= 1  # rounding of float32 vs float64 statistics only
    assert (engine != expected).mean() < 0.01


@pytest.mark.slow  # the tiny student over 160x160, tiled and not
def test_tiled_agrees_with_single_tile_without_seams(
    rgb_crop, tmp_path: Path, residual: SuperResolver
) -> None:
    resolver = residual
    src, _ = rgb_crop(160)
    single = upscale_raster(src, tmp_path / "single.tif", resolver, UpscaleOptions(tile_size=160))
    assert single.tiles == 1
    tiled = upscale_raster(src, tmp_path / "tiled.tif", resolver, UpscaleOptions(tile_size=64, overlap=16))
    assert tiled.tiles == 9
    with rasterio.open(tmp_path / "single.tif") as a, rasterio.open(tmp_path / "tiled.tif") as b:
        one, many = a.read().astype(np.float64), b.read().astype(np.float64)
    plan = make_plan(160, 160, 4, 64, 16, resolver.multiple)
    mad = np.abs(one - many).mean()
    assert mad < 1.0  # of 255: the network's global operations see a different context per tile
    ratio = seam_ratio(many, one, plan)
    assert ratio < 1.1, ratio  # no visible seam: steps across seam lines are like steps anywhere
    # the same measure finds hard seams: a no-blend mosaic of the same tiles (overlap 0)
    upscale_raster(src, tmp_path / "hard.tif", resolver, UpscaleOptions(tile_size=64, overlap=0))
    with rasterio.open(tmp_path / "hard.tif") as c:
        cut = c.read().astype(np.float64)
    hard_ratio = seam_ratio(cut, one, make_plan(160, 160, 4, 64, 0, resolver.multiple))
    assert hard_ratio > ratio, (hard_ratio, ratio)


def test_all_nodata_windows_skip_the_model(rgb_crop, tmp_path: Path, resolver: SuperResolver) -> None:
    _, data = rgb_crop(128)
    data = data.copy()
    data[:, :, :64] = 0  # left half nodata
    data[data == 0] = 0
    transform = Affine(0.5, 0, 576667, 0, -0.5, 5188223)
    path = write_raster(tmp_path / "half.tif", data, crs="EPSG:32615", transform=transform, nodata=0)
    report = upscale_raster(path, tmp_path / "out.tif", resolver, UpscaleOptions(tile_size=32, overlap=8))
    assert report.tiles == 25 and report.tiles_skipped >= 5
    with rasterio.open(tmp_path / "out.tif") as dst:
        out = dst.read()
        assert (out[:, :, : 64 * 4] == 0).all()
        assert (out[:, :, 64 * 4 :] != 0).any(axis=0).all()  # every valid pixel stays valid
