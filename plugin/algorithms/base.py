"""Parameters and plumbing shared by the SlimDiffSR algorithms.

Each algorithm turns its parameters into a plain request dict and hands it to the worker;
everything that needs torch or rasterio happens in the backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterString,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ...backend.bands import parse_bands
from ..settings import backend_env_dir, backend_python_setting
from ..worker_client import SETUP_HINT, WorkerCancelledError, WorkerError, locate_python, run_request

HELP_URL = "https://github.com/slimdiffsr/slimdiffsr-qgis/blob/main/docs/qgis.md"
ICON_PATH = Path(__file__).resolve().parent.parent.parent / "resources" / "icon.svg"

DEVICES = ["auto", "cpu", "cuda"]
PRECISIONS = ["auto", "fp32", "bf16", "fp16", "int8"]
SCALES: list[tuple[str, int | None]] = [
    ("From the weights file", None),
    ("x2", 2),
    ("x4", 4),
    ("x8", 8),
]
MAKE_INSTALL_HINT = "run 'make install' in the plugin folder to (re)create it"
WEIGHTS_FILTER = "SlimDiffSR weights (*.safetensors *.pkl *.pth *.pt);;All files (*.*)"


def tr(text: str) -> str:
    return QCoreApplication.translate("SlimDiffSR", text)


def absolute(path: str) -> str:
    """A file path the worker can open.

    The worker runs in the plugin folder, so a path relative to QGIS's working directory
    (``qgis_process run ... INPUT=scene.tif``) must reach it absolute. GDAL data source
    strings (``/vsizip/...``, ``NETCDF:file.nc:var``) are not files and pass unchanged.
    """
    if not path or Path(path).is_absolute() or path.startswith("/vsi"):
        return path
    if ":" in path and not Path(path).exists():
        return path
    return str(Path(path).absolute())


class SlimDiffSRAlgorithm(QgsProcessingAlgorithm):
    """Common parameters (weights, scale, bands, device, precision) and the worker call."""

    INPUT = "INPUT"
    WEIGHTS = "WEIGHTS"
    SCALE = "SCALE"
    BANDS = "BANDS"
    DEVICE = "DEVICE"
    PRECISION = "PRECISION"

    def createInstance(self):  # noqa: N802 - QGIS API
        return type(self)()

    def group(self) -> str:
        return tr("Super-resolution")

    def groupId(self) -> str:  # noqa: N802 - QGIS API
        return "superresolution"

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def helpUrl(self) -> str:  # noqa: N802 - QGIS API
        return HELP_URL

    # -- parameters --------------------------------------------------------------------
    def add_model_parameters(self) -> None:
        self.addParameter(
            QgsProcessingParameterFile(
                self.WEIGHTS,
                tr("Model weights (empty: bundled default model)"),
                behavior=QgsProcessingParameterFile.File,
                optional=True,
                fileFilter=WEIGHTS_FILTER,
            )
        )
        scale = QgsProcessingParameterEnum(
            self.SCALE,
            tr("Scale (only needed when the weights file does not record it)"),
            options=[label for label, _ in SCALES],
            defaultValue=0,
        )
        self.addParameter(scale)
        self.addParameter(
            QgsProcessingParameterString(
                self.BANDS,
                tr("Bands to use as red, green, blue (e.g. 4,3,2; empty: bands 1,2,3 or the single band)"),
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(self.DEVICE, tr("Device"), options=DEVICES, defaultValue=0)
        )
        self.addParameter(
            QgsProcessingParameterEnum(self.PRECISION, tr("Precision"), options=PRECISIONS, defaultValue=0)
        )

    @staticmethod
    def make_advanced(parameter: QgsProcessingParameterDefinition) -> QgsProcessingParameterDefinition:
        parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        return parameter

    def checkParameterValues(self, parameters: dict[str, Any], context: QgsProcessingContext):  # noqa: N802
        """Catch bad band lists, non-file layers and a missing backend environment before
        anything starts (reported here, the message is shown once, not as a run failure)."""
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        try:
            locate_python(backend_python_setting(), env_dir=backend_env_dir())
        except WorkerError as exc:
            return False, str(exc)
        try:
            bands = parse_bands(self.parameterAsString(parameters, self.BANDS, context))
        except ValueError as exc:
            return False, str(exc)
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is not None:
            if layer.providerType() != "gdal":
                return False, tr(
                    f"layer '{layer.name()}' is not a file-based raster ({layer.providerType()}); "
                    "save it as a GeoTIFF first (Raster > Conversion > Translate)"
                )
            count = layer.bandCount()
            if bands and any(not 1 <= b <= count for b in bands):
                return False, tr(f"band(s) {bands} do not all exist; '{layer.name()}' has bands 1 to {count}")
        return True, ""

    def model_options(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        """The request fields both algorithms share (None = the backend's default)."""
        weights = absolute(self.parameterAsFile(parameters, self.WEIGHTS, context)) or None
        if weights and not Path(weights).is_file():
            raise QgsProcessingException(tr(f"weights file not found: {weights}; check the path"))
        try:
            bands = parse_bands(self.parameterAsString(parameters, self.BANDS, context))
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None
        return {
            "weights": weights,
            "scale": SCALES[self.parameterAsEnum(parameters, self.SCALE, context)][1],
            "bands": bands,
            "device": DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)],
            "precision": PRECISIONS[self.parameterAsEnum(parameters, self.PRECISION, context)],
        }

    def input_path(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[QgsRasterLayer, str]:
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(tr("the input raster could not be loaded; check the layer or path"))
        if layer.providerType() != "gdal":
            raise QgsProcessingException(
                tr(f"'{layer.name()}' is not a file-based raster; save it as a GeoTIFF first")
            )
        return layer, absolute(layer.source())

    def run_worker(self, request: dict[str, Any], feedback: QgsProcessingFeedback) -> dict[str, Any]:
        """The worker call with its failures turned into QgsProcessingException."""
        try:
            return run_request(request, feedback, setting=backend_python_setting(), env_dir=backend_env_dir())
        except WorkerCancelledError as exc:
            raise QgsProcessingException(str(exc)) from None
        except WorkerError as exc:
            # An environment that lacks a package: the worker says 'make install', which users
            # who installed the plugin from a zip cannot run; the setup algorithm repairs it.
            repair = f"{SETUP_HINT.replace(' once', ' again')} to repair it"
            message = str(exc).replace(MAKE_INSTALL_HINT, repair)
            raise QgsProcessingException(tr(f"SlimDiffSR: {message}")) from None
