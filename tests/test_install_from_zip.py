"""A GIS user's installation, end to end: the release zip into a fresh QGIS profile, then
``slimdiffsr:setup`` and ``slimdiffsr:upscale`` through ``qgis_process``. No make, no
checkout on the plugin path, no root step: only QGIS as Debian installs it.

One setup (about a minute or two here: pip takes torch's CPU build from the local wheel or
its cache) serves every check. The measured time and size are written to
``build/install_from_zip.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.qgis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
QGIS_PROCESS = Path("/usr/bin/qgis_process.bin")


class Profile:
    """A new QGIS profile folder, as the user's ``~/.local/share/QGIS/QGIS3``."""

    def __init__(self, base: Path) -> None:
        self.config = base / "QGIS3"
        self.plugins = self.config / "profiles" / "default" / "python" / "plugins"
        self.plugins.mkdir(parents=True)
        self.runtime = base / "runtime"
        self.runtime.mkdir(mode=0o700)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "QGIS_"))}
        env.pop("SLIMDIFFSR_PYTHON", None)
        env.update(
            QT_QPA_PLATFORM="offscreen",
            XDG_RUNTIME_DIR=str(self.runtime),
            QGIS_CUSTOM_CONFIG_PATH=str(self.config),
        )
        return env

    def process(self, *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(QGIS_PROCESS), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            cwd=self.config.parent,
        )

    def run(self, algorithm: str, timeout: int = 900, **params: object):
        proc = self.process(
            "--json", "run", algorithm, "--", *[f"{k}={v}" for k, v in params.items()], timeout=timeout
        )
        try:
            return proc, json.loads(proc.stdout) if proc.stdout.strip() else None
        except ValueError:
            pytest.fail(f"qgis_process --json printed something that is not JSON: {proc.stdout[:2000]}")


@pytest.fixture(scope="module")
def package() -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("make package needs the git checkout")
    proc = subprocess.run(["make", "-s", "package"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = re.search(r"(build/slimdiffsr-[\d.]+\.zip): (\d+) files, ([\d.]+) MB", proc.stdout)
    assert line, proc.stdout
    return ROOT / line.group(1)


def test_package_holds_the_plugin_and_backend_only(package: Path) -> None:
    names = [n for n in zipfile.ZipFile(package).namelist() if not n.endswith("/")]
    assert package.stat().st_size < 25 * 2**20
    assert all(n.startswith("slimdiffsr/") for n in names)
    inside = {n.removeprefix("slimdiffsr/") for n in names}
    for needed in (
        "__init__.py",
        "metadata.txt",
        "LICENSE",
        "requirements.txt",
        "plugin/backend_env.py",
        "plugin/algorithms/setup.py",
        "backend/worker.py",
        "backend/engine/run.py",
        "resources/weights/slimdiffsr_default_x4.safetensors",
        "resources/icon.svg",
    ):
        assert needed in inside, needed
    for unwanted in ("tests/", "tools/", "devtools/", "mk/", ".ci/", "backend/training/", "docs/images/"):
        assert not any(n.startswith(unwanted) for n in inside), unwanted
    for unwanted in (
        "Makefile",
        "pyproject.toml",
        "requirements-dev.txt",
        "requirements-train.txt",
        "backend/default_model.py",
    ):
        assert unwanted not in inside, unwanted
    # The QGIS side must not need anything the zip lacks.
    assert not any("training" in n for n in inside if n.startswith("plugin/"))


@pytest.fixture(scope="module")
def installed(package: Path, tmp_path_factory) -> Profile:
    if not QGIS_PROCESS.exists():
        pytest.skip("QGIS is not installed (apt-get install qgis python3-qgis)")
    profile = Profile(tmp_path_factory.mktemp("user"))
    zipfile.ZipFile(package).extractall(profile.plugins)
    enabled = profile.process("plugins", "enable", "slimdiffsr")
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    return profile


@pytest.fixture(scope="module")
def set_up(installed: Profile) -> tuple[Profile, dict]:
    started = time.monotonic()
    proc, result = installed.run("slimdiffsr:setup", timeout=1800)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = result["results"]
    env = installed.config / "profiles" / "default" / "slimdiffsr" / "env"
    assert results["PYTHON_PATH"] == str(env / "bin" / "python")
    measured = {"setup_seconds": round(seconds, 1), "env_size_mb": results["ENV_SIZE_MB"]}
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "install_from_zip.json").write_text(json.dumps(measured, indent=2))
    return installed, result


def test_setup_logs_pip_and_the_self_test_then_upscale_runs(set_up, fixtures_dir, tmp_path) -> None:
    profile, result = set_up
    log = "\n".join(result["log"]["info"])
    assert "Successfully installed" in log or "already satisfied" in log  # pip's own output
    assert "self-test: device: cpu" in log
    # the bundled models made ready for this CPU (graphs exported, or torch: nothing to export)
    assert re.search(r"prepare: x4: cpu .*(graphs exported|nothing to export)", log)
    assert re.search(r"prepare: x8: cpu .*(graphs exported|nothing to export)", log)
    assert re.search(r"backend environment ready: .* \(\d+\.\d\d GB", log)
    assert 100 < result["results"]["ENV_SIZE_MB"] < 3000  # the CPU build, not the 4.9 GB CUDA one

    import rasterio
    from rasterio.windows import Window

    with rasterio.open(fixtures_dir / "webodm/orthophoto.tif") as src:
        window = Window(0, 0, 64, 48)
        profile_ = dict(
            driver="GTiff",
            width=64,
            height=48,
            count=3,
            dtype=src.dtypes[0],
            crs=src.crs,
            transform=src.window_transform(window),
        )
        with rasterio.open(tmp_path / "scene.tif", "w", **profile_) as dst:
            dst.write(src.read([1, 2, 3], window=window))
    proc, out = profile.run("slimdiffsr:upscale", INPUT=tmp_path / "scene.tif", OUTPUT=tmp_path / "sr.tif")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    with rasterio.open(tmp_path / "sr.tif") as dst:
        assert (dst.width, dst.height, dst.count) == (256, 192, 3)


def test_second_setup_finds_the_healthy_environment_in_seconds(set_up) -> None:
    profile, _ = set_up
    started = time.monotonic()
    proc, result = profile.run("slimdiffsr:setup")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.monotonic() - started < 30
    assert any("already set up and healthy" in line for line in result["log"]["info"])


def test_broken_environment_names_the_setup_algorithm(set_up, tmp_path) -> None:
    """torch gone from the environment: one line naming what repairs it."""
    profile, result = set_up
    env = Path(result["results"]["PYTHON_PATH"]).parent.parent
    torch_dir = next(env.glob("lib/python3*/site-packages/torch"))
    hidden = torch_dir.with_name("torch.hidden")
    torch_dir.rename(hidden)
    try:
        src = tmp_path / "in.tif"
        import numpy as np
        import rasterio
        from rasterio.transform import from_origin

        with rasterio.open(
            src,
            "w",
            driver="GTiff",
            width=16,
            height=16,
            count=3,
            dtype="uint8",
            crs="EPSG:32633",
            transform=from_origin(500000, 5000000, 10, 10),
        ) as dst:
            dst.write(np.zeros((3, 16, 16), "uint8"))
        output = tmp_path / "o.tif"
        proc = profile.process("run", "slimdiffsr:upscale", "--", f"INPUT={src}", f"OUTPUT={output}")
    finally:
        hidden.rename(torch_dir)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    # One line says what, why and what to do (the worker's traceback only goes to the debug log).
    lines = [line for line in text.splitlines() if "lacks the package 'torch'" in line]
    assert lines and all("(slimdiffsr:setup) again to repair it" in line for line in lines), text[-2000:]
    assert "make install" not in text
