"""The provider inside a QGIS application: registration, parameter definitions, the Processing
setting, and the one-line messages a user reads when the backend is missing or misplaced."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import processing
import pytest
from qgis.core import (
    QgsApplication,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterDefinition,
    QgsSettings,
)

from .conftest import ROOT, import_plugin, plugin_copy

SETTING_KEY = "/Processing/Configuration/SLIMDIFFSR_PYTHON"


def registry():
    return QgsApplication.processingRegistry()


@pytest.fixture()
def bare(plugin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``make(iface)`` -> a plugin instance from a copy without .venv, as unzipped before setup
    (a link would resolve to this repository's .venv), imported under its own name. It takes
    the provider id: the repository's plugin is unloaded meanwhile and registered again after."""
    monkeypatch.delenv("SLIMDIFFSR_PYTHON", raising=False)
    name = f"slimdiffsr_bare_{tmp_path.name}"
    package = import_plugin(plugin_copy(tmp_path / name).parent, name)
    made = []

    def make(iface=None):
        made.append(package.classFactory(iface))  # kept: QGIS does not own the provider
        return made[-1]

    plugin.unload()
    try:
        yield make
    finally:
        for instance in made:
            instance.unload()
        plugin.initProcessing()


def test_provider_and_algorithms_are_registered(plugin) -> None:
    provider = registry().providerById("slimdiffsr")
    assert provider is plugin.provider and provider.name() == "SlimDiffSR"
    assert {a.id(): a.displayName() for a in provider.algorithms()} == {
        "slimdiffsr:upscale": "SlimDiffSR Upscale",
        "slimdiffsr:assess": "SlimDiffSR Quality Check",
        "slimdiffsr:setup": "Set up SlimDiffSR backend",
    }


def test_upscale_parameters(plugin) -> None:
    alg = registry().algorithmById("slimdiffsr:upscale")
    params = {p.name(): p for p in alg.parameterDefinitions()}
    names = ("INPUT", "WEIGHTS", "BANDS", "DEVICE", "PRECISION", "TILE_SIZE", "OVERLAP", "OUTPUT", "SCALE")
    assert set(names) <= set(params)
    assert params["INPUT"].type() == "raster" and params["OUTPUT"].type() == "rasterDestination"
    advanced = QgsProcessingParameterDefinition.FlagAdvanced
    optional = QgsProcessingParameterDefinition.FlagOptional
    assert params["TILE_SIZE"].flags() & advanced and params["OVERLAP"].flags() & advanced
    assert params["WEIGHTS"].flags() & optional and params["BANDS"].flags() & optional
    assert params["DEVICE"].options() == ["auto", "cpu", "cuda"]
    assert params["PRECISION"].options() == ["auto", "fp32", "bf16", "fp16", "int8"]
    assert "*.safetensors *.pkl *.pth *.pt" in params["WEIGHTS"].fileFilter()
    assert alg.helpUrl().startswith("https://") and alg.group() == "Super-resolution"
    assert alg.flags() & QgsProcessingAlgorithm.FlagCanCancel


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"BANDS": "5,6,7"}, "do not all exist"),
        ({"BANDS": "1,1,2"}, "repeats a band"),
        ({"BANDS": "red"}, "not a list of band numbers"),
        ({"OUTPUT": "out.png"}, "not a GeoTIFF"),
    ],
)
def test_invalid_parameters_are_refused_with_a_clear_message(plugin, data, tmp_path, params, message) -> None:
    run = {"INPUT": str(data["custom"]), "OUTPUT": str(tmp_path / "out.tif"), "PRECISION": 1}
    run.update({k: str(tmp_path / v) if k == "OUTPUT" else v for k, v in params.items()})
    with pytest.raises(QgsProcessingException, match=message) as info:
        processing.run("slimdiffsr:upscale", run)
    assert "Traceback" not in str(info.value)
    assert not list(tmp_path.glob("out.*"))


def test_processing_setting_is_offered_and_overrides_the_environment(plugin, data, tmp_path) -> None:
    """The 'Backend Python' option of Processing > Options > Providers > SlimDiffSR."""
    from processing.core.ProcessingConfig import ProcessingConfig

    assert ProcessingConfig.settings["SLIMDIFFSR_PYTHON"].description.startswith("Backend Python")
    params = {"INPUT": str(data["custom"]), "OUTPUT": str(tmp_path / "o.tif")}
    QgsSettings().setValue(SETTING_KEY, "/opt/elsewhere/bin/python")
    try:
        with pytest.raises(QgsProcessingException) as info:
            processing.run("slimdiffsr:upscale", params)
    finally:
        QgsSettings().remove(SETTING_KEY)
    assert "set by the Processing setting 'Backend Python' does not exist: /opt/elsewhere/bin/python" in str(
        info.value
    )


def test_missing_environment_names_the_setup_algorithm_once(bare, data, tmp_path, monkeypatch) -> None:
    bare().initProcessing()
    params = {"INPUT": str(data["custom"]), "OUTPUT": str(tmp_path / "o.tif")}
    with pytest.raises(QgsProcessingException) as info:
        processing.run("slimdiffsr:upscale", params)
    text = str(info.value)
    assert text.count("backend environment was not found") == 1, text
    assert "'Set up SlimDiffSR backend' (slimdiffsr:setup)" in text and "make install" not in text

    monkeypatch.setenv("SLIMDIFFSR_PYTHON", "/nonexistent/bin/python")
    with pytest.raises(QgsProcessingException, match="SLIMDIFFSR_PYTHON environment variable does not exist"):
        processing.run("slimdiffsr:upscale", params)
    assert not (tmp_path / "o.tif").exists()


def test_desktop_prompt_opens_the_setup_algorithm(bare, monkeypatch) -> None:
    """No environment: initGui puts a message-bar item whose button opens slimdiffsr:setup;
    with an environment configured, no prompt."""
    from qgis.gui import QgsMessageBar
    from qgis.PyQt.QtWidgets import QPushButton

    opened: list[str] = []
    monkeypatch.setattr(processing, "execAlgorithmDialog", lambda alg_id, params=None: opened.append(alg_id))

    class Iface:  # the part of QgisInterface the plugin uses, with a real message bar
        def __init__(self) -> None:
            self.bar = QgsMessageBar()

        def messageBar(self) -> QgsMessageBar:  # noqa: N802 - QGIS API
            return self.bar

    iface = Iface()
    first = bare(iface)
    first.initGui()
    item = iface.bar.currentItem()
    assert item is not None
    assert "the backend is not set up yet" in item.text() and "was not found" in item.text()
    button = item.findChild(QPushButton, "slimdiffsr_setup_button")
    assert button is not None and button.text() == "Set up SlimDiffSR backend..."
    button.click()
    assert opened == ["slimdiffsr:setup"]
    assert registry().algorithmById(opened[0]).displayName() == "Set up SlimDiffSR backend"
    assert iface.bar.currentItem() is None
    first.unload()

    monkeypatch.setenv("SLIMDIFFSR_PYTHON", sys.executable)
    iface = Iface()
    bare(iface).initGui()
    assert iface.bar.currentItem() is None


def test_plugin_loads_without_the_backend_packages(tmp_path: Path) -> None:
    """import_guard.py in a fresh interpreter of this environment (Debian's python3, as QGIS)."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "slimdiffsr").symlink_to(ROOT, target_is_directory=True)
    guard = Path(__file__).with_name("import_guard.py")
    proc = subprocess.run(
        [sys.executable, str(guard), str(tmp_path / "plugins")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "['slimdiffsr:assess', 'slimdiffsr:setup', 'slimdiffsr:upscale']" in proc.stdout
