"""``python -m backend.cli upscale``: help, success, exit codes, one-line errors, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rasterio
from affine import Affine
from conftest import random_rgb, write_raster

ROOT = Path(__file__).resolve().parent.parent
UPSCALE = [sys.executable, "-m", "backend.cli", "upscale"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*UPSCALE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def weights(nano_x4: Path) -> Path:
    return nano_x4


def raster(path: Path, size: int) -> Path:
    """A 3-band uint8 raster in UTM 33N, 10 m pixels (conftest's defaults)."""
    return write_raster(path, random_rgb(size))


def tiled_run(src: Path, out: Path, weights: Path, *extra: str) -> list[str]:
    """The arguments of a CPU run in 32-pixel tiles with an 8-pixel overlap."""
    return [
        str(src),
        str(out),
        "--weights",
        str(weights),
        "--device",
        "cpu",
        "--tile-size",
        "32",
        "--overlap",
        "8",
        *extra,
    ]


def test_help_lists_the_options() -> None:
    r = cli("--help", timeout=60)
    assert r.returncode == 0
    for opt in (
        "--weights",
        "--scale",
        "--bands",
        "--device",
        "--precision",
        "--tile-size",
        "--overlap",
        "--cog",
        "--overviews",
    ):
        assert opt in r.stdout


def test_success(tmp_path: Path, weights: Path) -> None:
    src = raster(tmp_path / "in.tif", 64)
    r = cli(*tiled_run(src, tmp_path / "out.tif", weights, "--bands", "3,2,1"))
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "tile/s" in r.stderr  # the tqdm bar is on stderr
    with rasterio.open(tmp_path / "out.tif") as dst:
        assert (dst.width, dst.height, dst.count) == (256, 256, 3)
        assert dst.transform == Affine(10, 0, 500000, 0, -10, 5000000) * Affine.scale(0.25)


@pytest.mark.parametrize("case", ["not_a_raster", "bad_bands", "missing_dir", "same_path", "bad_weights"])
def test_bad_input_exits_2_with_one_line(tmp_path: Path, weights: Path, case: str) -> None:
    src = raster(tmp_path / "in.tif", 32)
    args = [str(src), str(tmp_path / "out.tif"), "--weights", str(weights), "--device", "cpu"]
    if case == "not_a_raster":
        (tmp_path / "x.tif").write_text("hello")
        args[0] = str(tmp_path / "x.tif")
    elif case == "bad_bands":
        args += ["--bands", "1,x"]
    elif case == "missing_dir":
        args[1] = str(tmp_path / "no" / "out.tif")
    elif case == "same_path":
        args[1] = str(src)
    elif case == "bad_weights":
        args[3] = str(tmp_path / "missing.safetensors")
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert not (tmp_path / "out.tif").exists()


def test_usage_error_exits_2() -> None:
    r = cli("--scale", "3", "a.tif", "b.tif", timeout=60)
    assert r.returncode == 2


@pytest.mark.slow  # a 400x400 raster, long enough to be interrupted mid-run
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_exits_130_and_leaves_nothing(tmp_path: Path, weights: Path, sig: int) -> None:
    src = raster(tmp_path / "in.tif", 400)
    proc = subprocess.Popen(
        [*UPSCALE, *tiled_run(src, tmp_path / "out.tif", weights, "--batch-size", "1")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".part.tif") for p in tmp_path.iterdir()):  # the main pass has begun
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelled" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
