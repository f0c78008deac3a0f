"""The plugin through ``qgis_process``, the command line a user runs, in real QGIS 3.22.

``/usr/bin/qgis_process.bin`` (``/usr/bin/qgis_process`` is broken on Debian 12) with an
isolated profile (``QGIS_CUSTOM_CONFIG_PATH``) and ``QGIS_PLUGINPATH`` pointing at a folder
whose ``slimdiffsr`` entry links to this repository, exactly as installed. Everything that
needs no command line (registration, parameters, settings, batch, models, cancelling, the
desktop prompt) is tested in-process in tests/pyqgis.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import rasterio
from affine import Affine
from conftest import crop_raster, plugin_rasters, random_rgb, write_raster
from rasterio.transform import from_origin

pytestmark = pytest.mark.qgis

ROOT = Path(__file__).resolve().parent.parent
QGIS_PROCESS = Path("/usr/bin/qgis_process.bin")
UTM_ORIGIN = from_origin(300_000, 4_000_000, 30, 30)


def _qgis_env(profile: Path, plugins: Path, **extra: str) -> dict[str, str]:
    runtime = profile.parent / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(
        QT_QPA_PLATFORM="offscreen",
        XDG_RUNTIME_DIR=str(runtime),
        QGIS_CUSTOM_CONFIG_PATH=str(profile),
        QGIS_PLUGINPATH=str(plugins),
    )
    env.pop("SLIMDIFFSR_PYTHON", None)
    env.update(extra)
    return env


class Qgis:
    """An isolated QGIS profile with the plugin installed from ``plugin_root``."""

    def __init__(self, base: Path, plugin_root: Path) -> None:
        self.profile = base / "profile"
        self.plugins = base / "plugins"
        self.profile.mkdir(parents=True)
        self.plugins.mkdir()
        (self.plugins / "slimdiffsr").symlink_to(plugin_root, target_is_directory=True)
        enabled = self.process("plugins", "enable", "slimdiffsr", json_output=False)
        assert enabled.returncode == 0, enabled.stderr + enabled.stdout

    def process(
        self, *args: str, json_output: bool = True, timeout: int = 600, cwd: Path | None = None, **env: str
    ):
        cmd = [str(QGIS_PROCESS), *(["--json"] if json_output else []), *args]
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=_qgis_env(self.profile, self.plugins, **env),
        )

    def run(self, algorithm: str, params: dict[str, object], cwd: Path | None = None, **env: str):
        """``qgis_process --json run``; returns (completed process, parsed stdout or None)."""
        args = [f"{k}={v}" for k, v in params.items()]
        proc = self.process("run", algorithm, "--", *args, cwd=cwd, **env)
        try:
            parsed = json.loads(proc.stdout) if proc.stdout.strip() else None
        except ValueError:
            pytest.fail(f"qgis_process --json printed something that is not JSON:\n{proc.stdout[:2000]}")
        return proc, parsed


@pytest.fixture(scope="session")
def qgis(tmp_path_factory) -> Qgis:
    if not QGIS_PROCESS.exists():
        pytest.skip("QGIS is not installed (apt-get install qgis python3-qgis, or 'make install')")
    return Qgis(tmp_path_factory.mktemp("qgis"), ROOT)


@pytest.fixture(scope="session")
def rasters(tmp_path_factory) -> dict[str, Path]:
    return plugin_rasters(tmp_path_factory.mktemp("rasters"))


def utm_scene(path: Path, size: int, seed: int) -> Path:
    """A 3-band uint16 raster in UTM 18N with 30 m pixels, its corner at (300 km, 4000 km)."""
    return write_raster(path, random_rgb(size, seed, "uint16"), crs="EPSG:32618", transform=UTM_ORIGIN)


def assert_upscaled(src_path: Path, dst_path: Path, scale: int, bands: int) -> None:
    with rasterio.open(src_path) as src, rasterio.open(dst_path) as dst:
        assert (dst.width, dst.height) == (src.width * scale, src.height * scale)
        assert dst.count == bands
        assert dst.transform.almost_equals(src.transform * Affine.scale(1 / scale))
        assert dst.crs == src.crs
        assert dst.dtypes[0] == src.dtypes[0]


# -- runs ----------------------------------------------------------------------------------------


def test_full_run_keeps_size_transform_and_custom_crs(qgis: Qgis, rasters, tiny_weights, tmp_path) -> None:
    out = tmp_path / "sr.tif"
    proc, result = qgis.run(
        "slimdiffsr:upscale",
        {
            "INPUT": rasters["custom"],
            "WEIGHTS": tiny_weights,
            "DEVICE": 1,
            "PRECISION": 1,
            "TILE_SIZE": 32,
            "OVERLAP": 8,
            "OUTPUT": out,
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["results"]["OUTPUT"] == str(out)
    log = "\n".join(result["log"]["info"])
    assert re.search(r"device: cpu \(\w+\), fp32", log)
    assert_upscaled(rasters["custom"], out, 4, 3)
    with rasterio.open(out) as dst:
        assert dst.crs.to_epsg() is None and "Albers" in dst.crs.to_wkt()


def test_paths_relative_to_the_working_directory(qgis: Qgis, rasters, tiny_weights, tmp_path) -> None:
    """``qgis_process run ... INPUT=scene.tif`` from the data folder: the worker, which runs
    in the plugin folder, must still find the input and weights and write the output here."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(rasters["utm"], work / "scene.tif")
    shutil.copy(tiny_weights, work / "model.safetensors")
    proc, result = qgis.run(
        "slimdiffsr:upscale",
        {"INPUT": "scene.tif", "WEIGHTS": "model.safetensors", "DEVICE": 1, "OUTPUT": "sr.tif"},
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_upscaled(work / "scene.tif", work / "sr.tif", 4, 3)
    utm_scene(work / "q.tif", 160, seed=5)
    report = work / "report.html"
    proc, _ = qgis.run(
        "slimdiffsr:assess",
        {"INPUT": "q.tif", "WEIGHTS": "model.safetensors", "DEVICE": 1, "OUTPUT_HTML": "report.html"},
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report.stat().st_size > 0


def test_release_checkpoint_as_weights(qgis: Qgis, rasters, tmp_path) -> None:
    """A paper-size checkpoint in the release's format (DataParallel names, pickled dict)."""
    import torch

    from backend.model import SlimDiffSRStudent

    torch.manual_seed(0)
    model = SlimDiffSRStudent()
    ckpt = tmp_path / "release_checkpoint.pkl"  # no scale in the name: SCALE gives it
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, ckpt)
    del model
    src = utm_scene(tmp_path / "small.tif", 24, seed=3)
    out = tmp_path / "sr_release.tif"
    proc, result = qgis.run(
        "slimdiffsr:upscale",
        {"INPUT": src, "WEIGHTS": ckpt, "SCALE": 2, "DEVICE": 1, "PRECISION": 1, "OUTPUT": out},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_upscaled(src, out, 4, 3)


# -- failures ------------------------------------------------------------------------------------


def test_worker_error_arrives_as_a_processing_error(qgis: Qgis, rasters, tmp_path) -> None:
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00" * 100)
    proc, _ = qgis.run(
        "slimdiffsr:upscale", {"INPUT": rasters["custom"], "WEIGHTS": bad, "OUTPUT": tmp_path / "o.tif"}
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "corrupt.safetensors is not a readable .safetensors file" in text
    assert "Traceback" not in text
    assert not (tmp_path / "o.tif").exists()


def test_worker_crash_arrives_as_a_processing_error(qgis: Qgis, rasters, tmp_path) -> None:
    fake = tmp_path / "crashing-python"
    fake.write_text(
        '#!/bin/sh\necho \'{"type": "hello"}\'\necho "Fatal Python error: Segmentation fault" >&2\nexit 139\n'
    )
    fake.chmod(0o755)
    proc, _ = qgis.run(
        "slimdiffsr:upscale",
        {"INPUT": rasters["custom"], "OUTPUT": tmp_path / "o.tif"},
        SLIMDIFFSR_PYTHON=str(fake),
    )
    assert proc.returncode != 0
    assert (
        "stopped unexpectedly (exit code 139: Fatal Python error: Segmentation fault)"
        in proc.stdout + proc.stderr
    )


# -- quality check -------------------------------------------------------------------------------


def test_quality_check_reports_metrics_and_writes_report(qgis: Qgis, tiny_weights, tmp_path) -> None:
    src = utm_scene(tmp_path / "q.tif", 160, seed=5)
    extent = (
        f"{300_000 + 30 * 20},{300_000 + 30 * 150},{4_000_000 - 30 * 150},{4_000_000 - 30 * 20} [EPSG:32618]"
    )
    proc, result = qgis.run(
        "slimdiffsr:assess",
        {
            "INPUT": src,
            "EXTENT": extent,
            "WEIGHTS": tiny_weights,
            "PRECISION": 1,
            "SAMPLE_SIZE": 96,
            "OUTPUT_HTML": tmp_path / "q.html",
            "OUTPUT_PNG": tmp_path / "q.png",
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = result["results"]
    for key in ("PSNR_SR", "SSIM_SR", "PSNR_BICUBIC", "SSIM_BICUBIC"):
        assert isinstance(res[key], float)
    assert isinstance(res["SR_HELPS"], bool) and "bicubic" in res["VERDICT"]
    page = (tmp_path / "q.html").read_text()
    assert page.count("<table>") == 1 and page.count("<th>") >= 7 and "point-sampled" in page
    assert (tmp_path / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(re.search(r"device: cpu \(\w+\), fp32", line) for line in result["log"]["info"])


@pytest.mark.parametrize(
    ("fixture", "bands"),
    [
        ("solaris/sample_geotiff_custom_proj.tif", 3),  # int16, custom Albers WKT, no EPSG code
        ("geoapi/UTM2GTIF.tiff", 1),  # classic 1-band uint8 GeoTIFF
    ],
)
def test_real_rasters_keep_their_georeferencing(
    qgis: Qgis, fixtures_dir, tiny_weights, tmp_path, fixture, bands
) -> None:
    """Real files from the project's shared data, cut to a small window to stay fast."""
    from rasterio.windows import Window

    with rasterio.open(fixtures_dir / fixture) as src:
        window, nodata = Window(src.width // 2, src.height // 2, 40, 36), src.nodata
    src_path, _ = crop_raster(fixtures_dir / fixture, tmp_path / "crop.tif", window, nodata=nodata)
    out = tmp_path / "sr.tif"
    proc, result = qgis.run(
        "slimdiffsr:upscale", {"INPUT": src_path, "WEIGHTS": tiny_weights, "PRECISION": 1, "OUTPUT": out}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_upscaled(src_path, out, 4, bands)
