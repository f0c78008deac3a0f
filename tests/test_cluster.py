"""The engine on a real Dask cluster: a scheduler and two worker processes on 127.0.0.1.

Cluster output against the local output (same size, georeferencing, type, nodata, band
descriptions; pixels within 1 DN), many files with a bad one, a worker SIGKILLed in the
middle of a run, cancel, and an unreachable scheduler.
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytest.importorskip("distributed")

from backend.engine import UpscaleOptions, upscale_raster  # noqa: E402
from backend.engine.options import EngineCancelled, EngineError  # noqa: E402
from devtools.local_dask import LocalDask, dask_env  # noqa: E402

OPTIONS = UpscaleOptions(tile_size=32, overlap=8, block_size=64, region_tiles=1)
"""Small tiles and blocks: an 80x80 raster makes 9 windows, 9 regions and 16 seams."""


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """The nano member of the student family with seeded random weights: the fastest model
    that still has every module (and colour match, so the statistics task runs too)."""
    from devtools.compact import CONFIGS, write_random_weights

    return write_random_weights(tmp_path_factory.mktemp("weights") / "nano_x4.safetensors", CONFIGS["nano"])


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    cluster = LocalDask(tmp_path_factory.mktemp("dask"))
    try:
        cluster.wait_for_workers(2)
        yield cluster
    finally:
        cluster.stop()


def _raster(path: Path, dtype: str, size: int = 80, seed: int = 0) -> Path:
    """A georeferenced 3-band raster with a nodata corner and band descriptions."""
    from affine import Affine

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / 7.0
    base = np.stack([np.sin(x + k) * np.cos(y / (k + 1)) for k in range(3)]) * 90 + 128
    data = np.clip(base + rng.normal(0, 12, base.shape), 1, 255)
    if dtype == "uint16":
        data = data * 40
    data = data.astype(dtype)
    data[:, :12, :20] = 0
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": dtype,
        "nodata": 0,
        "crs": "EPSG:32633",
        "transform": Affine(10, 0, 500000, 0, -10, 5000000),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(("red", "green", "blue"), start=1):
            dst.set_band_description(i, name)
    return path


def assert_same_raster(a: Path, b: Path) -> None:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert (x.width, x.height, x.count) == (y.width, y.height, y.count)
        assert x.transform == y.transform
        assert x.crs == y.crs
        assert x.dtypes == y.dtypes
        assert x.nodata == y.nodata
        assert x.descriptions == y.descriptions
        dx, dy = x.read().astype(np.int64), y.read().astype(np.int64)
        assert np.abs(dx - dy).max() <= 1
        assert (x.read_masks(1) == y.read_masks(1)).all()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".part" in p.name)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_cluster_output_equals_local(dask_cluster, tiny_weights, tmp_path, dtype):
    src = _raster(tmp_path / f"in_{dtype}.tif", dtype)
    options = dataclasses.replace(OPTIONS, weights=str(tiny_weights))
    upscale_raster(src, tmp_path / "local.tif", None, options)
    lines: list[str] = []
    report = upscale_raster(
        src,
        tmp_path / "cluster.tif",
        None,
        dataclasses.replace(options, scheduler=dask_cluster.address),
        log=lines.append,
    )
    assert_same_raster(tmp_path / "local.tif", tmp_path / "cluster.tif")
    assert report.tiles == 9 and len(report.workers) == 2
    assert "2 worker(s)" in lines[0] and "cpu" in lines[0]
    assert _leftovers(tmp_path) == []


def test_cancel_leaves_nothing(dask_cluster, tiny_weights, tmp_path):
    src = _raster(tmp_path / "in.tif", "uint8")
    seen: list[int] = []
    options = dataclasses.replace(OPTIONS, weights=str(tiny_weights), scheduler=dask_cluster.address)
    with pytest.raises(EngineCancelled):
        upscale_raster(
            src,
            tmp_path / "out.tif",
            None,
            options,
            progress=lambda p: seen.append(p.tiles_done),
            cancel=lambda: bool(seen),
        )
    assert not (tmp_path / "out.tif").exists()
    assert _leftovers(tmp_path) == []


def test_batch_with_a_bad_file(dask_cluster, tiny_weights, tmp_path):
    from backend.engine.batch import list_inputs, run_batch

    inputs = tmp_path / "in"
    out = tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    for i in range(4):
        _raster(inputs / f"scene{i}.tif", "uint8", size=40, seed=i)
    (inputs / "broken.tif").write_bytes(b"not a raster")
    options = dataclasses.replace(OPTIONS, weights=str(tiny_weights), scheduler=dask_cluster.address)
    report = run_batch(list_inputs(str(inputs)), out, options)
    assert sorted(Path(p).name for p in report.done) == [f"scene{i}.tif" for i in range(4)]
    assert list(report.failed) == [str(inputs / "broken.tif")]
    assert "broken.tif" in report.failed[str(inputs / "broken.tif")]
    assert "\n" not in report.failed[str(inputs / "broken.tif")]
    assert sorted(p.name for p in out.iterdir()) == [f"scene{i}_x4.tif" for i in range(4)]
    # the same file locally is the same file
    upscale_raster(
        inputs / "scene2.tif", tmp_path / "local.tif", None, dataclasses.replace(options, scheduler=None)
    )
    assert_same_raster(tmp_path / "local.tif", out / "scene2_x4.tif")
    # a re-run (here a list file) skips complete outputs and retries only the failure
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(f"in/{p.name}" for p in sorted(inputs.iterdir())) + "\n")
    again = run_batch(list_inputs(str(listing)), out, options)
    assert len(again.skipped) == 4 and again.done == [] and len(again.failed) == 1


def test_worker_killed_mid_run(tiny_weights, tmp_path):
    cluster = LocalDask(tmp_path)
    try:
        cluster.wait_for_workers(2)
        src = _raster(tmp_path / "in.tif", "uint8")
        options = dataclasses.replace(OPTIONS, weights=str(tiny_weights))
        upscale_raster(src, tmp_path / "local.tif", None, options)
        victim = cluster.workers[0]
        killed = threading.Event()

        def on_progress(p) -> None:
            if 0 < p.tiles_done < p.tiles_total and not killed.is_set():
                victim.send_signal(signal.SIGKILL)
                killed.set()

        report = upscale_raster(
            src,
            tmp_path / "cluster.tif",
            None,
            dataclasses.replace(options, scheduler=cluster.address),
            progress=on_progress,
        )
        assert killed.is_set() and victim.wait(timeout=10) == -signal.SIGKILL
        assert report.tiles == 9
        assert_same_raster(tmp_path / "local.tif", tmp_path / "cluster.tif")
        assert _leftovers(tmp_path) == []
    finally:
        cluster.stop()


def test_unreachable_scheduler(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = _raster(tmp_path / "in.tif", "uint8", size=16)
    t0 = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "backend.cli",
            "upscale",
            str(src),
            str(tmp_path / "o.tif"),
            "--scheduler",
            f"tcp://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dask_env(),
        timeout=120,
    )
    assert time.monotonic() - t0 < 30
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Dask scheduler" in lines[0]
    assert not (tmp_path / "o.tif").exists()
    with pytest.raises(EngineError):
        from backend.engine.cluster import connect

        connect(f"tcp://127.0.0.1:{port}", timeout=2)


def test_local_path_does_not_import_dask():
    code = (
        "import sys; import backend.engine, backend.engine.run, backend.engine.command, backend.cli; "
        "sys.exit(any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dask_env()).returncode == 0
