"""Bad inputs, cancellation and errors: one-line EngineErrors and nothing left behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import random_rgb, write_raster

from backend.engine import EngineCancelled, EngineError, UpscaleOptions, upscale_raster


def small_raster(path: Path, size: int = 96) -> Path:
    return write_raster(path, random_rgb(size))


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


OPTS = UpscaleOptions(device="cpu", precision="fp32", tile_size=32, overlap=8)


def test_cancel_leaves_nothing(tmp_path: Path, nano_x4: Path) -> None:
    src = small_raster(tmp_path / "in.tif")
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(EngineCancelled):
        upscale_raster(src, tmp_path / "out.tif", nano_x4, OPTS, cancel=cancel)
    assert leftovers(tmp_path, {"in.tif"}) == []


def test_ctrl_c_in_progress_leaves_nothing(tmp_path: Path, nano_x4: Path) -> None:
    src = small_raster(tmp_path / "in.tif")
    seen = []

    def progress(p: object) -> None:
        seen.append(p)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upscale_raster(src, tmp_path / "out.tif", nano_x4, OPTS, progress=progress)
    assert seen and leftovers(tmp_path, {"in.tif"}) == []


def test_existing_output_is_replaced_only_on_success(tmp_path: Path, nano_x4: Path) -> None:
    src = small_raster(tmp_path / "in.tif")
    (tmp_path / "out.tif").write_bytes(b"previous result")
    with pytest.raises(EngineCancelled):
        upscale_raster(src, tmp_path / "out.tif", nano_x4, OPTS, cancel=lambda: True)
    assert (tmp_path / "out.tif").read_bytes() == b"previous result"
    upscale_raster(src, tmp_path / "out.tif", nano_x4, OPTS)
    with rasterio.open(tmp_path / "out.tif") as dst:
        assert dst.width == 384
    assert leftovers(tmp_path, {"in.tif", "out.tif"}) == []


def test_error_in_the_middle_removes_the_temporary_file(tmp_path: Path, nano_x4: Path) -> None:
    """A raster whose header is fine but whose later tiles are damaged."""
    noise = np.random.default_rng(1).integers(0, 255, (3, 256, 256), dtype=np.uint8)  # compresses little
    tiles = {"tiled": True, "blockxsize": 64, "blockysize": 64, "compress": "deflate"}
    src = write_raster(tmp_path / "broken.tif", noise, **tiles)
    raw = bytearray(src.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 4000] = b"\xff" * 4000  # corrupt compressed tiles mid-file
    src.write_bytes(bytes(raw))
    with pytest.raises(EngineError) as info:
        upscale_raster(src, tmp_path / "out.tif", nano_x4, OPTS)
    assert "\n" not in str(info.value)
    assert leftovers(tmp_path, {"broken.tif"}) == []


def bad_input(tmp_path: Path, kind: str) -> Path:
    if kind == "text":
        p = tmp_path / "notes.tif"
        p.write_text("not a raster\n")
    elif kind == "truncated":
        p = small_raster(tmp_path / "t.tif")
        p.write_bytes(p.read_bytes()[:300])
    elif kind == "zero_bands":  # GDAL refuses to open it; the engine's own check covers containers
        p = tmp_path / "empty.vrt"
        p.write_text('<VRTDataset rasterXSize="64" rasterYSize="64"></VRTDataset>')
    elif kind == "tiny":
        p = small_raster(tmp_path / "tiny.tif", size=4)
    elif kind == "missing":
        p = tmp_path / "nope.tif"
    else:
        raise AssertionError(kind)
    return p


@pytest.mark.parametrize(
    "kind,message",
    [
        ("text", "cannot read"),
        ("truncated", "cannot read|reading"),
        ("zero_bands", "no bands|bands on VRTDataset"),
        ("tiny", "at least"),
        ("missing", "not found"),
    ],
)
def test_bad_inputs(tmp_path: Path, nano_x4: Path, kind: str, message: str) -> None:
    src = bad_input(tmp_path, kind)
    before = leftovers(tmp_path, set())
    with pytest.raises(EngineError, match=message) as info:
        upscale_raster(src, tmp_path / "out.tif", nano_x4, OPTS)
    assert "\n" not in str(info.value)
    assert leftovers(tmp_path, set()) == before


def test_output_over_input_is_refused(tmp_path: Path, nano_x4: Path) -> None:
    src = small_raster(tmp_path / "in.tif")
    before = src.read_bytes()
    with pytest.raises(EngineError, match="is the input"):
        upscale_raster(src, src, nano_x4, OPTS)
    os.symlink(src, tmp_path / "link.tif")
    with pytest.raises(EngineError, match="is the input"):
        upscale_raster(src, tmp_path / "link.tif", nano_x4, OPTS)
    assert src.read_bytes() == before


def test_output_folder_missing_or_not_writable(tmp_path: Path, nano_x4: Path) -> None:
    src = small_raster(tmp_path / "in.tif")
    with pytest.raises(EngineError, match="does not exist"):
        upscale_raster(src, tmp_path / "missing" / "out.tif", nano_x4, OPTS)
    (tmp_path / "file").write_text("x")
    with pytest.raises(EngineError, match="not a directory"):
        upscale_raster(src, tmp_path / "file" / "out.tif", nano_x4, OPTS)
    with pytest.raises(EngineError, match=r"\.tif"):
        upscale_raster(src, tmp_path / "out.png", nano_x4, OPTS)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_folder(tmp_path: Path, nano_x4: Path) -> None:
    src = small_raster(tmp_path / "in.tif")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(EngineError, match="cannot write"):
            upscale_raster(src, ro / "out.tif", nano_x4, OPTS)
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize(
    "bands,message",
    [("a,b", "not a list of band numbers"), ("9", "does not exist"), ("1,1", "repeats"), ("0", "start at 1")],
)
def test_bad_band_lists(tmp_path: Path, nano_x4: Path, bands: str, message: str) -> None:
    src = small_raster(tmp_path / "in.tif")
    opts = UpscaleOptions(device="cpu", bands=bands)
    with pytest.raises(EngineError, match=message):
        upscale_raster(src, tmp_path / "out.tif", nano_x4, opts)


@pytest.mark.parametrize("tile,overlap", [(4, 0), (32, -1), (32, 20)])
def test_bad_tile_options(tmp_path: Path, nano_x4: Path, tile: int, overlap: int) -> None:
    src = small_raster(tmp_path / "in.tif")
    with pytest.raises(EngineError, match="overlap"):
        upscale_raster(src, tmp_path / "out.tif", nano_x4, UpscaleOptions(tile_size=tile, overlap=overlap))


def test_not_enough_disk_space(tmp_path: Path, nano_x4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = small_raster(tmp_path / "in.tif")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage._replace(free=1000))
    with pytest.raises(EngineError, match="disk space"):
        upscale_raster(src, tmp_path / "out.tif", nano_x4, OPTS)
    assert leftovers(tmp_path, {"in.tif"}) == []


@pytest.mark.slow  # two runs at 160x160 with overviews
def test_overviews_and_cog(tmp_path: Path, nano_x4: Path) -> None:
    src = small_raster(tmp_path / "in.tif", size=160)
    upscale_raster(src, tmp_path / "ovr.tif", nano_x4, UpscaleOptions(device="cpu", overviews=True))
    upscale_raster(src, tmp_path / "cog.tif", nano_x4, UpscaleOptions(device="cpu", cog=True))
    with rasterio.open(tmp_path / "ovr.tif") as a, rasterio.open(tmp_path / "cog.tif") as b:
        assert a.overviews(1) and b.overviews(1)
        assert b.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert a.transform == b.transform and a.crs == b.crs
        np.testing.assert_array_equal(a.read(), b.read())
    assert leftovers(tmp_path, {"in.tif", "ovr.tif", "cog.tif"}) == []
