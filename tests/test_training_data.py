"""Training data: band choice, radiometry, nodata rejection, seeded crops, bicubic LR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import ColorInterp

from backend.training.data import (
    DataError,
    FixedCrops,
    RasterCropDataset,
    choose_bands,
    describe_raster,
    dihedral,
    find_rasters,
    recolour,
    stable_split,
)
from backend.training.degradations import bicubic_downscale, network_input


def write_raster(path: Path, data: np.ndarray, *, nodata=None, interp=None, driver="GTiff") -> Path:
    count, h, w = data.shape
    with rasterio.open(
        path, "w", driver=driver, width=w, height=h, count=count, dtype=data.dtype, nodata=nodata
    ) as ds:
        ds.write(data)
        if interp:
            ds.colorinterp = interp
    return path


@pytest.fixture()
def raster_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "hr"
    folder.mkdir()
    # uint16 3-band with a zero collar (undeclared nodata) on the left 40 columns.
    a = rng.integers(1000, 5000, size=(3, 96, 128), dtype=np.uint16)
    a[:, :, :40] = 0
    write_raster(folder / "u16.tif", a)
    # 1-band uint8, replicated to RGB.
    write_raster(folder / "gray.tif", rng.integers(1, 255, size=(1, 80, 80), dtype=np.uint8))
    # BGR-ordered 4-band uint8 whose colour interpretation says where red is.
    b = rng.integers(1, 255, size=(4, 64, 64), dtype=np.uint8)
    write_raster(
        folder / "bgrn.tif",
        b,
        interp=[ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined],
    )
    # Too small for a 64 crop: skipped.
    write_raster(folder / "small.tif", rng.integers(1, 255, size=(3, 32, 32), dtype=np.uint8))
    return folder


def test_band_choice_follows_colour_interpretation():
    assert choose_bands([ColorInterp.blue, ColorInterp.green, ColorInterp.red]) == (3, 2, 1)
    assert choose_bands(
        [ColorInterp.gray, ColorInterp.undefined, ColorInterp.undefined, ColorInterp.undefined]
    ) == (1, 2, 3)
    assert choose_bands([ColorInterp.gray]) == (1, 1, 1)


def test_radiometry_uint8_and_uint16_percentiles(raster_folder: Path):
    gray = describe_raster(raster_folder / "gray.tif")
    assert (gray.low, gray.high, gray.bands) == (0.0, 255.0, (1, 1, 1))
    u16 = describe_raster(raster_folder / "u16.tif")
    # Percentiles of the valid (non-collar) values 1000..4999, not of the zeros.
    assert 1000 <= u16.low < 1050 and 4950 < u16.high <= 4999
    assert describe_raster(raster_folder / "bgrn.tif").bands == (3, 2, 1)


def test_crops_are_seeded_valid_and_in_range(raster_folder: Path):
    files = find_rasters([raster_folder])
    ds = RasterCropDataset(files, 64, seed=3, max_invalid=0.0)
    assert [Path(p).name for p in ds.skipped] == ["small.tif"]
    again = RasterCropDataset(files, 64, seed=3, max_invalid=0.0)
    other = RasterCropDataset(files, 64, seed=4, max_invalid=0.0)
    crops = [ds[i] for i in range(12)]
    for i, c in enumerate(crops):
        assert c.shape == (3, 64, 64) and c.dtype == torch.float32
        assert 0.0 <= float(c.min()) and float(c.max()) <= 1.0
        # No crop contains the zero collar (all bands exactly 0).
        assert not bool((c == 0).all(dim=0).any())
        assert torch.equal(c, again[i])
    assert not all(torch.equal(a, other[i]) for i, a in enumerate(crops))


def test_sampling_weighs_files_by_area_or_its_square_root(raster_folder: Path):
    files = find_rasters([raster_folder])
    by_area = RasterCropDataset(files, 64, seed=0)
    by_root = RasterCropDataset(files, 64, seed=0, sampling="sqrt-area")
    areas = np.array([s.width * s.height for s in by_area.sources], dtype=np.float64)
    assert len(set(areas)) > 1  # the folder has files of different sizes
    np.testing.assert_allclose(by_area.weights, areas / areas.sum())
    np.testing.assert_allclose(by_root.weights, np.sqrt(areas) / np.sqrt(areas).sum())
    # The largest file's share shrinks, the smallest one's grows.
    assert by_root.weights[areas.argmax()] < by_area.weights[areas.argmax()]
    assert by_root.weights[areas.argmin()] > by_area.weights[areas.argmin()]
    with pytest.raises(DataError, match="sampling must be one of"):
        RasterCropDataset(files, 64, sampling="uniform")


def test_recolour_keeps_range_structure_and_makes_grey_and_reordered_bands():
    rng = np.random.default_rng(5)
    # Three distinct smooth bands: a ramp, its transpose and their product.
    ramp = np.linspace(0.05, 0.95, 32, dtype=np.float32)
    x = np.stack([np.tile(ramp, (32, 1)), np.tile(ramp[:, None], (1, 32)), np.outer(ramp, ramp)])
    greys = reordered = 0
    spreads: list[float] = []

    def monotone(src: np.ndarray, band: np.ndarray) -> bool:
        order = np.argsort(src, axis=None, kind="stable")
        return bool(np.all(np.diff(band.ravel()[order]) >= -1e-6))

    for _ in range(200):
        y = recolour(x, rng)
        assert y.shape == x.shape and y.dtype == np.float32
        assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
        # Monotone per band: each output band ranks pixels as one input band does.
        if np.allclose(y[0], y[1]) and np.allclose(y[1], y[2]):
            greys += 1
            continue
        sources = [next(i for i, src in enumerate(x) if monotone(src, band)) for band in y]
        assert sorted(sources) == [0, 1, 2]
        reordered += sources != [0, 1, 2]
        spreads.append(float(np.mean([np.ptp(b) for b in y])))
    # Contrast is only lowered: on average the bands span less than the input's.
    assert np.mean(spreads) < 0.9 * float(np.mean([np.ptp(b) for b in x]))
    assert 25 <= greys <= 75  # about a quarter
    assert reordered > 100  # five of six orders move a band


def test_colour_augment_and_zoom_out_are_seeded_and_off_by_default(raster_folder: Path):
    files = find_rasters([raster_folder])
    plain = RasterCropDataset(files, 32, seed=7, max_invalid=0.0)
    recoloured = RasterCropDataset(files, 32, seed=7, max_invalid=0.0, colour_augment=1.0)
    zoomed = RasterCropDataset(files, 32, seed=7, max_invalid=0.0, zoom_out=2.0)
    for ds in (recoloured, zoomed):
        again = RasterCropDataset(
            files, 32, seed=7, max_invalid=0.0, colour_augment=ds.colour_augment, zoom_out=ds.zoom_out
        )
        crops = [ds[i] for i in range(16)]
        assert all(c.shape == (3, 32, 32) and 0.0 <= float(c.min()) and float(c.max()) <= 1.0 for c in crops)
        assert all(torch.equal(c, again[i]) for i, c in enumerate(crops))
        assert sum(not torch.equal(c, plain[i]) for i, c in enumerate(crops)) >= 4
    # Off (the defaults), the crops are those of a dataset without the options.
    off = RasterCropDataset(files, 32, seed=7, max_invalid=0.0, colour_augment=0.0, zoom_out=1.0)
    assert all(torch.equal(off[i], plain[i]) for i in range(16))
    with pytest.raises(DataError, match="colour_augment"):
        RasterCropDataset(files, 32, colour_augment=1.5)
    with pytest.raises(DataError, match="zoom_out"):
        RasterCropDataset(files, 32, zoom_out=0.5)


def test_zoom_out_reads_a_larger_window_reduced_to_the_crop(tmp_path: Path):
    # Vertical stripes 8 px wide: a crop at the file's GSD shows 4 periods of 16 px over
    # 64 px; one zoomed out by f shows about 4 f periods.
    cols = (np.arange(256) // 8 % 2 * 200 + 20).astype(np.uint8)
    write_raster(tmp_path / "stripes.tif", np.broadcast_to(cols, (3, 256, 256)).copy())
    ds = RasterCropDataset([tmp_path / "stripes.tif"], 64, seed=1, zoom_out=3.0, colour_augment=0.0)

    def periods(crop: torch.Tensor) -> float:
        across, along = crop[0].mean(dim=0).numpy(), crop[0].mean(dim=1).numpy()
        profile = across if across.std() > along.std() else along  # the crop may be rotated
        spectrum = np.abs(np.fft.rfft(profile - profile.mean()))
        return float(spectrum.argmax())  # the stripes' dominant frequency: periods per crop

    counts = [periods(ds[i]) for i in range(40)]
    native = [c for c in counts if c == 4]
    zoomed = [c for c in counts if c > 4]
    assert len(native) >= 10 and len(zoomed) >= 10  # about half each
    assert len(native) + len(zoomed) == len(counts) and max(counts) <= 3 * 4
    # A collection no window of which passes the nodata check still gives crops of the crop size.
    mostly_empty = RasterCropDataset([tmp_path / "stripes.tif"], 64, seed=1, zoom_out=3.0, max_invalid=-1.0)
    assert all(mostly_empty[i].shape == (3, 64, 64) for i in range(8))


def test_dihedral_group_is_complete():
    x = torch.arange(16.0).view(1, 4, 4)
    variants = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(variants) == 8


def test_stable_split_holds_out_by_name(tmp_path: Path):
    paths = [tmp_path / f"f{i}.tif" for i in range(20)]
    train, val = stable_split(paths, 0.2)
    assert len(val) == 4 and not set(train) & set(val)
    train2, val2 = stable_split([*paths, tmp_path / "new.tif"], 0.2)
    assert set(val) <= set(val2) | {tmp_path / "new.tif"} or len(set(val) & set(val2)) >= 3


def test_fixed_crops_are_repeatable(raster_folder: Path):
    a = FixedCrops([raster_folder / "u16.tif"], 32, per_file=3)
    b = FixedCrops([raster_folder / "u16.tif"], 32, per_file=3)
    assert len(a) == 3 and all(torch.equal(x, y) for x, y in zip(a.crops, b.crops, strict=True))


def test_bicubic_lr_and_network_input_shapes():
    hr = torch.rand(2, 3, 64, 64)
    lr = bicubic_downscale(hr, 4)
    assert lr.shape == (2, 3, 16, 16) and 0 <= float(lr.min()) and float(lr.max()) <= 1
    # A constant image stays constant (antialiased kernels sum to one).
    flat = bicubic_downscale(torch.full((1, 3, 32, 32), 0.25), 4)
    assert torch.allclose(flat, torch.full_like(flat, 0.25), atol=1e-6)
    up = network_input(lr, 4)
    assert up.shape == (2, 3, 64, 64)
    assert abs(float(up.mean()) - float((hr * 2 - 1).mean())) < 0.05


def test_real_rasters_of_every_kind(shared_data: Path):
    files = find_rasters([shared_data / "fixtures"])
    ds = RasterCropDataset(files, 64, seed=0)
    assert len(ds.sources) >= 9
    x = torch.stack([ds[i] for i in range(6)])
    assert x.shape == (6, 3, 64, 64) and torch.isfinite(x).all()


def test_in_memory_cache_gives_the_windowed_reads_values(shared_data: Path) -> None:
    """Whole-file caching is only a speed-up: every crop equals the windowed read."""
    files = find_rasters([shared_data / "fixtures"])
    cached = RasterCropDataset(files, 48, seed=5, max_invalid=0.5)
    windowed = RasterCropDataset(files, 48, seed=5, max_invalid=0.5, cache_mb=0)
    for i in range(24):
        assert torch.equal(cached[i], windowed[i])
    assert cached._cached_bytes > 0 and windowed._cached_bytes == 0
