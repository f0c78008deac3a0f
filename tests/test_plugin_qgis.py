"""The plugin inside real QGIS 3.22: qgis_process and PyQGIS scripts in subprocesses.

The venv running pytest has no ``qgis`` module (and must not: torch/rasterio beside
QGIS is what the worker design avoids), so QGIS always runs in a child process:

* ``/usr/bin/qgis_process.bin`` (``/usr/bin/qgis_process`` is broken on Debian 12) with an
  isolated profile (``QGIS_CUSTOM_CONFIG_PATH``) and ``QGIS_PLUGINPATH`` pointing at a
  folder whose ``slimdiffsr`` entry links to this repository, exactly as installed;
* Debian's ``/usr/bin/python3`` running a small PyQGIS script, for what qgis_process cannot
  do: batch runs in one session, the model designer, cancelling.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import from_origin

pytestmark = pytest.mark.qgis

ROOT = Path(__file__).resolve().parent.parent
QGIS_PROCESS = Path("/usr/bin/qgis_process.bin")
QGIS_PYTHON = Path("/usr/bin/python3")
# A projected CRS with no EPSG code: the output must carry the same WKT, not a guessed code.
CUSTOM_WKT = (
    'PROJCS["unnamed",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
    'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Albers_Conic_Equal_Area"],'
    'PARAMETER["latitude_of_center",23],PARAMETER["longitude_of_center",-96],'
    'PARAMETER["standard_parallel_1",29.5],PARAMETER["standard_parallel_2",45.5],'
    'PARAMETER["false_easting",0],PARAMETER["false_northing",0],UNIT["metre",1]]'
)


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

    def script(self, body: str, tmp: Path, timeout: int = 600) -> dict:
        """Run a PyQGIS script with the plugin loaded; it fills the dict ``out`` (returned)."""
        script = tmp / "driver.py"
        result = tmp / "driver.json"
        script.write_text(
            DRIVER_HEAD.format(plugins=str(self.plugins))
            + textwrap.dedent(body)
            + DRIVER_TAIL.format(result=str(result))
        )
        proc = subprocess.run(
            [str(QGIS_PYTHON), str(script)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_qgis_env(self.profile, self.plugins),
        )
        assert proc.returncode == 0 and result.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads(result.read_text())


DRIVER_HEAD = """
import json, sys
from qgis.core import (QgsApplication, QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback,
                       QgsRasterLayer)
QgsApplication.setPrefixPath("/usr", True)
app = QgsApplication([], False)
app.initQgis()
sys.path.insert(0, "/usr/share/qgis/python/plugins")
sys.path.insert(0, {plugins!r})
from processing.core.Processing import Processing
Processing.initialize()
import processing
import slimdiffsr
plugin = slimdiffsr.classFactory(None)
plugin.initProcessing()
out = {{}}
"""
# Standalone PyQGIS scripts can crash while tearing QGIS down (after the work is done and
# written); leave through os._exit once the result file is closed.
DRIVER_TAIL = """
plugin.unload()
with open({result!r}, "w") as f:
    json.dump(out, f)
import os
os._exit(0)
"""


def write_raster(
    path: Path, data: np.ndarray, crs: CRS, transform: Affine, nodata: float | None = None
) -> Path:
    bands, h, w = data.shape
    profile = dict(
        driver="GTiff",
        width=w,
        height=h,
        count=bands,
        dtype=data.dtype.name,
        crs=crs,
        transform=transform,
        nodata=nodata,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def image(h: int, w: int, bands: int, seed: int, scale: float = 3000.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / 16.0
    data = [np.sin(x + k) * np.cos(y * (k + 1) / 2) for k in range(bands)]
    noise = rng.standard_normal((bands, h, w)) * 0.1
    return ((np.stack(data) + noise + 1.5) * scale / 3).astype(np.uint16)


@pytest.fixture(scope="session")
def qgis(tmp_path_factory) -> Qgis:
    if not QGIS_PROCESS.exists() or not QGIS_PYTHON.exists():
        pytest.skip("QGIS is not installed (apt-get install qgis python3-qgis, or 'make install')")
    return Qgis(tmp_path_factory.mktemp("qgis"), ROOT)


@pytest.fixture(scope="session")
def tiny_x4(tmp_path_factory, tiny_config) -> Path:
    import torch

    from backend.model import SlimDiffSRStudent
    from backend.weights import save_safetensors

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny_x4.safetensors"
    return save_safetensors(SlimDiffSRStudent(tiny_config), path, 4, name="tiny test model")


@pytest.fixture(scope="session")
def rasters(tmp_path_factory) -> dict[str, Path]:
    """Two small rasters: a custom-WKT rotated-free 3-band uint16 and a 4-band EPSG one."""
    folder = tmp_path_factory.mktemp("rasters")
    return {
        "custom": write_raster(
            folder / "custom_crs.tif",
            image(48, 40, 3, 1),
            CRS.from_wkt(CUSTOM_WKT),
            from_origin(-1_200_000, 1_800_000, 10, 10),
        ),
        "utm": write_raster(
            folder / "utm_4band.tif",
            image(40, 48, 4, 2),
            CRS.from_epsg(32621),
            from_origin(500_000, 7_200_000, 30, 30),
        ),
    }


def assert_upscaled(src_path: Path, dst_path: Path, scale: int, bands: int) -> None:
    with rasterio.open(src_path) as src, rasterio.open(dst_path) as dst:
        assert (dst.width, dst.height) == (src.width * scale, src.height * scale)
        assert dst.count == bands
        assert dst.transform.almost_equals(src.transform * Affine.scale(1 / scale))
        assert dst.crs == src.crs
        assert dst.dtypes[0] == src.dtypes[0]


# -- registration and parameters ---------------------------------------------------------------


def test_provider_and_algorithms_are_registered(qgis: Qgis) -> None:
    proc = qgis.process("list")
    listing = json.loads(proc.stdout)
    provider = listing["providers"]["slimdiffsr"]
    assert provider["name"] == "SlimDiffSR"
    assert set(provider["algorithms"]) == {"slimdiffsr:upscale", "slimdiffsr:assess", "slimdiffsr:setup"}
    assert provider["algorithms"]["slimdiffsr:upscale"]["name"] == "SlimDiffSR Upscale"
    assert provider["algorithms"]["slimdiffsr:assess"]["name"] == "SlimDiffSR Quality Check"
    assert provider["algorithms"]["slimdiffsr:setup"]["name"] == "Set up SlimDiffSR backend"


def test_upscale_parameters(qgis: Qgis) -> None:
    help_ = json.loads(qgis.process("help", "slimdiffsr:upscale").stdout)
    params = help_["parameters"]
    for name in (
        "INPUT",
        "WEIGHTS",
        "BANDS",
        "DEVICE",
        "PRECISION",
        "TILE_SIZE",
        "OVERLAP",
        "OUTPUT",
        "SCALE",
    ):
        assert name in params, name
    assert params["INPUT"]["type"]["id"] == "raster"
    assert params["OUTPUT"]["type"]["id"] == "rasterDestination"
    assert params["TILE_SIZE"]["is_advanced"] and params["OVERLAP"]["is_advanced"]
    assert params["WEIGHTS"]["optional"] and params["BANDS"]["optional"]
    assert params["DEVICE"]["raw_definition"]["options"] == ["auto", "cpu", "cuda"]
    assert params["PRECISION"]["raw_definition"]["options"] == ["auto", "fp32", "bf16", "fp16", "int8"]
    assert "*.safetensors *.pkl *.pth *.pt" in params["WEIGHTS"]["raw_definition"]["filefilter"]
    assert help_["algorithm_details"]["help_url"].startswith("https://")
    details = help_["algorithm_details"]
    assert details["group"] == "Super-resolution" and details["can_cancel"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"BANDS": "5,6,7"}, "do not all exist"),
        ({"BANDS": "1,1,2"}, "repeats a band"),
        ({"BANDS": "red"}, "not a list of band numbers"),
        ({"OUTPUT": "out.png"}, "not a GeoTIFF"),
    ],
)
def test_invalid_parameters_are_refused_with_a_clear_message(
    qgis: Qgis, rasters, tmp_path, params, message
) -> None:
    base = {"INPUT": rasters["custom"], "OUTPUT": tmp_path / "out.tif", "PRECISION": 1}
    base.update({k: (tmp_path / v if k == "OUTPUT" else v) for k, v in params.items()})
    proc, _ = qgis.run("slimdiffsr:upscale", base)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not list(tmp_path.glob("out.*"))


# -- runs ----------------------------------------------------------------------------------------


def test_full_run_keeps_size_transform_and_custom_crs(qgis: Qgis, rasters, tiny_x4, tmp_path) -> None:
    out = tmp_path / "sr.tif"
    proc, result = qgis.run(
        "slimdiffsr:upscale",
        {
            "INPUT": rasters["custom"],
            "WEIGHTS": tiny_x4,
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


def test_paths_relative_to_the_working_directory(qgis: Qgis, rasters, tiny_x4, tmp_path) -> None:
    """``qgis_process run ... INPUT=scene.tif`` from the data folder: the worker, which runs
    in the plugin folder, must still find the input and weights and write the output here."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(rasters["utm"], work / "scene.tif")
    shutil.copy(tiny_x4, work / "model.safetensors")
    proc, result = qgis.run(
        "slimdiffsr:upscale",
        {"INPUT": "scene.tif", "WEIGHTS": "model.safetensors", "DEVICE": 1, "OUTPUT": "sr.tif"},
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_upscaled(work / "scene.tif", work / "sr.tif", 4, 3)
    origin = from_origin(300_000, 4_000_000, 30, 30)
    write_raster(work / "q.tif", image(160, 160, 3, 5), CRS.from_epsg(32618), origin)
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
    src = write_raster(
        tmp_path / "small.tif",
        image(24, 24, 3, 3),
        CRS.from_epsg(32618),
        from_origin(300_000, 4_000_000, 30, 30),
    )
    out = tmp_path / "sr_release.tif"
    proc, result = qgis.run(
        "slimdiffsr:upscale",
        {"INPUT": src, "WEIGHTS": ckpt, "SCALE": 2, "DEVICE": 1, "PRECISION": 1, "OUTPUT": out},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_upscaled(src, out, 4, 3)


def test_batch_of_two_layers_and_modeler_in_one_session(qgis: Qgis, rasters, tiny_x4, tmp_path) -> None:
    """What the batch dialog does (one run per row, same session) and a model using the algorithm."""
    result = qgis.script(
        f"""
        from qgis.core import (QgsProcessingModelAlgorithm, QgsProcessingModelChildAlgorithm,
            QgsProcessingModelChildParameterSource as Src, QgsProcessingModelOutput,
            QgsProcessingModelParameter, QgsProcessingParameterRasterLayer)
        rows = [({str(rasters["custom"])!r}, "", {str(tmp_path / "b1.tif")!r}),
                ({str(rasters["utm"])!r}, "3,2,1", {str(tmp_path / "b2.tif")!r})]
        out["batch"] = []
        for path, bands, dest in rows:
            res = processing.run("slimdiffsr:upscale", {{"INPUT": path, "WEIGHTS": {str(tiny_x4)!r},
                "BANDS": bands, "PRECISION": 1, "OUTPUT": dest}})
            layer = QgsRasterLayer(res["OUTPUT"], "sr")
            src = QgsRasterLayer(path, "src")
            out["batch"].append([res["OUTPUT"], layer.isValid(), layer.crs() == src.crs(), layer.width()])

        model = QgsProcessingModelAlgorithm("sr model", "tests")
        model.addModelParameter(QgsProcessingParameterRasterLayer("image", "image"),
                                QgsProcessingModelParameter("image"))
        child = QgsProcessingModelChildAlgorithm("slimdiffsr:upscale")
        child.setChildId("sr")
        child.addParameterSources("INPUT", [Src.fromModelParameter("image")])
        child.addParameterSources("WEIGHTS", [Src.fromStaticValue({str(tiny_x4)!r})])
        child.addParameterSources("PRECISION", [Src.fromStaticValue(1)])
        # as the model designer's dialog does: every other parameter at its default
        upscale = QgsApplication.processingRegistry().algorithmById("slimdiffsr:upscale")
        for p in upscale.parameterDefinitions():
            unset = p.name() not in child.parameterSources() and not p.isDestination()
            if unset and p.defaultValue() is not None:
                child.addParameterSources(p.name(), [Src.fromStaticValue(p.defaultValue())])
        output = QgsProcessingModelOutput("result")
        output.setChildId("sr")
        output.setChildOutputName("OUTPUT")
        child.setModelOutputs({{"result": output}})
        model.addChildAlgorithm(child)
        ok, errors = model.validate()
        out["model_valid"] = [ok, errors]
        res = processing.run(model, {{"image": {str(rasters["utm"])!r},
                                      "sr:result": {str(tmp_path / "m.tif")!r}}})
        out["model"] = res["sr:result"]
        """,
        tmp_path,
    )
    for (path, valid, same_crs, _width), src in zip(
        result["batch"], (rasters["custom"], rasters["utm"]), strict=True
    ):
        assert valid and same_crs
        assert_upscaled(src, Path(path), 4, 3)
    assert result["model_valid"][0], result["model_valid"]
    assert_upscaled(rasters["utm"], Path(result["model"]), 4, 3)


def test_cancel_stops_the_worker_and_leaves_no_output(qgis: Qgis, tiny_x4, tmp_path) -> None:
    src = write_raster(
        tmp_path / "big.tif",
        image(512, 512, 3, 4),
        CRS.from_epsg(32618),
        from_origin(300_000, 4_000_000, 30, 30),
    )
    out = tmp_path / "cancelled.tif"
    result = qgis.script(
        f"""
        import time
        class CancelOnProgress(QgsProcessingFeedback):
            def setProgress(self, value):
                super().setProgress(value)
                if value > 0 and not self.isCanceled():
                    out["cancelled_at"] = value
                    self.cancel()
        feedback = CancelOnProgress()
        started = time.monotonic()
        try:
            processing.run("slimdiffsr:upscale", {{"INPUT": {str(src)!r}, "WEIGHTS": {str(tiny_x4)!r},
                "PRECISION": 1, "TILE_SIZE": 32, "OVERLAP": 8, "BATCH_SIZE": 1,
                "OUTPUT": {str(out)!r}}}, feedback=feedback)
            out["error"] = None
        except QgsProcessingException as exc:
            out["error"] = str(exc)
        out["seconds"] = time.monotonic() - started
        """,
        tmp_path,
    )
    assert "cancelled_at" in result
    assert result["error"] and "cancelled" in result["error"]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("cancelled")]


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


def plugin_copy(bare: Path) -> Path:
    """The plugin as unzipped, without a backend environment: its code (plugin, backend),
    resources without the weights, the entry files."""
    skip = shutil.ignore_patterns("__pycache__", "weights")
    for folder in ("plugin", "backend", "resources"):
        shutil.copytree(ROOT / folder, bare / folder, ignore=skip)
    for name in ("__init__.py", "metadata.txt"):
        shutil.copy(ROOT / name, bare / name)
    return bare


def test_missing_environment_names_the_setup_algorithm_once(
    qgis: Qgis, rasters, tmp_path_factory, tmp_path
) -> None:
    # A copy of the plugin without .venv (a symlink would resolve to this repository's .venv).
    bare = plugin_copy(tmp_path_factory.mktemp("bare") / "slimdiffsr")
    isolated = Qgis(tmp_path_factory.mktemp("qgis-bare"), bare)
    proc, _ = isolated.run("slimdiffsr:upscale", {"INPUT": rasters["custom"], "OUTPUT": tmp_path / "o.tif"})
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert text.count("backend environment was not found") == 1, text
    assert "'Set up SlimDiffSR backend' (slimdiffsr:setup)" in text and "make install" not in text
    assert "Traceback" not in text

    proc, _ = qgis.run(
        "slimdiffsr:upscale",
        {"INPUT": rasters["custom"], "OUTPUT": tmp_path / "o.tif"},
        SLIMDIFFSR_PYTHON="/nonexistent/bin/python",
    )
    assert (
        "SLIMDIFFSR_PYTHON environment variable does not exist: /nonexistent/bin/python"
        in proc.stdout + proc.stderr
    )


# -- quality check -------------------------------------------------------------------------------


def test_quality_check_reports_metrics_and_writes_report(qgis: Qgis, tiny_x4, tmp_path) -> None:
    src = write_raster(
        tmp_path / "q.tif",
        image(160, 160, 3, 5),
        CRS.from_epsg(32618),
        from_origin(300_000, 4_000_000, 30, 30),
    )
    extent = (
        f"{300_000 + 30 * 20},{300_000 + 30 * 150},{4_000_000 - 30 * 150},{4_000_000 - 30 * 20} [EPSG:32618]"
    )
    proc, result = qgis.run(
        "slimdiffsr:assess",
        {
            "INPUT": src,
            "EXTENT": extent,
            "WEIGHTS": tiny_x4,
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


@pytest.mark.skipif(sys.platform != "linux", reason="uses the Debian QGIS layout")
def test_plugin_loads_without_the_backend_packages(tmp_path) -> None:
    """The QGIS side imports only the standard library and qgis: no torch, numpy or rasterio,
    and of the backend only its standard-library modules (backend.bands, backend.errors),
    by relative import as the plugin package's own modules."""
    if not QGIS_PYTHON.exists():
        pytest.skip("no QGIS python")
    code = textwrap.dedent(
        f"""
        import sys, builtins
        real_import = builtins.__import__
        import importlib.util
        ALLOWED = ("slimdiffsr.backend", "slimdiffsr.backend.bands", "slimdiffsr.backend.errors")
        def guarded(name, globals=None, locals=None, fromlist=(), level=0):
            full = name
            if level:
                full = importlib.util.resolve_name("." * level + name, (globals or {{}}).get("__package__"))
            top = full.split(".")[0]
            if top in ("torch", "rasterio", "safetensors", "numpy", "backend") or (
                full.startswith("slimdiffsr.backend") and full not in ALLOWED
            ):
                raise ImportError("the QGIS side must not import " + full)
            return real_import(name, globals, locals, fromlist, level)
        builtins.__import__ = guarded
        from qgis.core import QgsApplication
        app = QgsApplication([], False); app.initQgis()
        sys.path.insert(0, {str(tmp_path)!r})
        import slimdiffsr
        p = slimdiffsr.classFactory(None); p.initProcessing(); p.initProcessing()
        ids = [a.id() for a in p.provider.algorithms()]
        p.unload()
        print(sorted(ids))
        """
    )
    (tmp_path / "slimdiffsr").symlink_to(ROOT, target_is_directory=True)
    proc = subprocess.run(
        [str(QGIS_PYTHON), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=_qgis_env(tmp_path / "p", tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "['slimdiffsr:assess', 'slimdiffsr:setup', 'slimdiffsr:upscale']" in proc.stdout


def test_processing_setting_overrides_the_environment(rasters, tmp_path) -> None:
    """The 'Backend Python' option of Processing > Options > Providers > SlimDiffSR is honoured."""
    if not QGIS_PROCESS.exists():
        pytest.skip("QGIS is not installed")
    custom = Qgis(tmp_path / "q", ROOT)
    ini = custom.profile / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    text = ini.read_text() if ini.is_file() else ""
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text(text + "\n[Processing]\nConfiguration\\SLIMDIFFSR_PYTHON=/opt/elsewhere/bin/python\n")
    proc, _ = custom.run("slimdiffsr:upscale", {"INPUT": rasters["custom"], "OUTPUT": tmp_path / "o.tif"})
    assert "set by the Processing setting 'Backend Python' does not exist: /opt/elsewhere/bin/python" in (
        proc.stdout + proc.stderr
    )


@pytest.mark.parametrize(
    ("fixture", "bands"),
    [
        ("solaris/sample_geotiff_custom_proj.tif", 3),  # int16, custom Albers WKT, no EPSG code
        ("geoapi/UTM2GTIF.tiff", 1),  # classic 1-band uint8 GeoTIFF
    ],
)
def test_real_rasters_keep_their_georeferencing(
    qgis: Qgis, fixtures_dir, tiny_x4, tmp_path, fixture, bands
) -> None:
    """Real files from the project's shared data, cut to a small window to stay fast."""
    from rasterio.windows import Window

    with rasterio.open(fixtures_dir / fixture) as src:
        window = Window(src.width // 2, src.height // 2, 40, 36)
        src_path = write_raster(
            tmp_path / "crop.tif", src.read(window=window), src.crs, src.window_transform(window), src.nodata
        )
    out = tmp_path / "sr.tif"
    proc, result = qgis.run(
        "slimdiffsr:upscale", {"INPUT": src_path, "WEIGHTS": tiny_x4, "PRECISION": 1, "OUTPUT": out}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_upscaled(src_path, out, 4, bands)


def test_desktop_prompt_opens_the_setup_algorithm(tmp_path) -> None:
    """No environment: initGui puts a message-bar item whose button opens slimdiffsr:setup;
    with an environment configured, no prompt."""
    if not QGIS_PYTHON.exists():
        pytest.skip("no QGIS python")
    bare = plugin_copy(tmp_path / "plugins" / "slimdiffsr")  # a copy without .venv, as unzipped
    code = textwrap.dedent(
        f"""
        import json, sys
        from qgis.core import QgsApplication
        from qgis.gui import QgsMessageBar
        from qgis.PyQt.QtWidgets import QPushButton
        app = QgsApplication([], True); app.initQgis()
        sys.path.insert(0, "/usr/share/qgis/python/plugins")
        sys.path.insert(0, {str(bare.parent)!r})
        from processing.core.Processing import Processing
        Processing.initialize()
        import processing
        opened = []
        processing.execAlgorithmDialog = lambda alg_id, params=None: opened.append(alg_id)
        class Iface:
            def __init__(self):
                self.bar = QgsMessageBar()
            def messageBar(self):
                return self.bar
        import slimdiffsr
        out = {{}}
        iface = Iface()
        plugin = slimdiffsr.classFactory(iface); plugin.initGui()
        item = iface.bar.currentItem()
        out["text"] = item.text() if item else None
        button = item.findChild(QPushButton, "slimdiffsr_setup_button") if item else None
        out["button"] = button.text() if button else None
        if button:
            button.click()
        out["opened"] = opened
        alg = QgsApplication.processingRegistry().algorithmById(opened[0]) if opened else None
        out["alg"] = alg.displayName() if alg else None
        out["after_click"] = iface.bar.currentItem() is not None
        plugin.unload()
        import os
        os.environ["SLIMDIFFSR_PYTHON"] = sys.executable
        iface2 = Iface()
        plugin = slimdiffsr.classFactory(iface2); plugin.initGui()
        out["prompt_with_env"] = iface2.bar.currentItem() is not None
        plugin.unload()
        print(json.dumps(out), flush=True)
        os._exit(0)
        """
    )
    proc = subprocess.run(
        [str(QGIS_PYTHON), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=_qgis_env(tmp_path / "p", tmp_path / "plugins"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "the backend is not set up yet" in out["text"] and "was not found" in out["text"]
    assert out["button"] == "Set up SlimDiffSR backend..."
    assert out["opened"] == ["slimdiffsr:setup"] and out["alg"] == "Set up SlimDiffSR backend"
    assert not out["after_click"]
    assert not out["prompt_with_env"]
