"""Parameters and plumbing shared by the SlimDiffSR algorithms.

Each algorithm turns its parameters into a plain request dict and hands it to the worker;
everything that needs torch or rasterio happens in the backend.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from qgis.core import (
    Qgis,
    QgsMessageLog,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsRasterLayer,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ...backend.bands import parse_bands
from ...backend.runtime.choices import PRECISIONS
from ..settings import backend_env_dir, backend_python_setting
from ..worker_client import SETUP_HINT, WorkerCancelledError, WorkerError, locate_python, run_request

HELP_URL = "https://github.com/slimdiffsr/slimdiffsr-qgis/blob/main/docs/qgis.md"
RESOURCES = Path(__file__).resolve().parent.parent.parent / "resources"
ICON_PATH = RESOURCES / "icon.svg"

DEVICES = ["auto", "cpu", "cuda"]
WEIGHTS_DIR = RESOURCES / "weights"
SCALES: list[int] = [2, 4, 8]
"""Scales the network supports; which of them have a bundled model is :func:`bundled_scales`."""
DEFAULT_SCALE = 4
"""The bundled model the backend takes when neither weights nor a scale are given."""
MAKE_INSTALL_HINT = "run 'make install' in the plugin folder to (re)create it"
WEIGHTS_FILTER = "SlimDiffSR weights (*.safetensors *.pkl *.pth *.pt);;All files (*.*)"


def tr(text: str) -> str:
    """The translation of ``text``; keep ``text`` a literal (values go in with ``.format``
    afterwards) so that the translation tools can find it."""
    return QCoreApplication.translate("SlimDiffSR", text)


def bundled_scales() -> list[int]:
    """The scales of the bundled default models, read from the files that ship
    (``resources/weights/slimdiffsr_default_x<N>.safetensors``), so the choices and their
    texts follow the models that exist."""
    if not WEIGHTS_DIR.is_dir():
        return []
    names = (re.fullmatch(r"slimdiffsr_default_x(\d+)\.safetensors", p.name) for p in WEIGHTS_DIR.iterdir())
    return sorted(int(m[1]) for m in names if m)


def scale_choices() -> list[str]:
    """The SCALE parameter's options: index 0 'from the weights file', then :data:`SCALES`."""
    bundled = bundled_scales()
    first = tr("From the weights file (no weights file: the bundled x{} model)").format(DEFAULT_SCALE)
    return [first] + [
        f"x{s}" if s in bundled else tr("x{} (a weights file for x{} only; no bundled model)").format(s, s)
        for s in SCALES
    ]


def log_trace(text: str) -> None:
    """A worker's traceback to QGIS's Log Messages panel (tab SlimDiffSR), for bug reports:
    the Processing log and qgis_process's output show the one-line error only."""
    QgsMessageLog.logMessage(text, "SlimDiffSR", Qgis.Info)


def advanced(parameter: QgsProcessingParameterDefinition) -> QgsProcessingParameterDefinition:
    """``parameter`` shown under 'Advanced Parameters' in the dialog."""
    parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return parameter


def integer_parameter(
    name: str, label: str, default: int, minimum: int, maximum: int
) -> QgsProcessingParameterNumber:
    """An advanced whole-number parameter (tile sizes, counts; 0 or -1 usually means automatic)."""
    return advanced(
        QgsProcessingParameterNumber(
            name,
            label,
            type=QgsProcessingParameterNumber.Integer,
            defaultValue=default,
            minValue=minimum,
            maxValue=maximum,
        )
    )


def file_parameter(
    name: str, label: str, folder: bool = False, file_filter: str = ""
) -> QgsProcessingParameterFile:
    """An optional file (or folder) chooser."""
    behavior = QgsProcessingParameterFile.Folder if folder else QgsProcessingParameterFile.File
    return QgsProcessingParameterFile(name, label, behavior=behavior, optional=True, fileFilter=file_filter)


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


class SlimDiffSRBase(QgsProcessingAlgorithm):
    """What every SlimDiffSR algorithm has: a fresh instance per run, the icon, the help page."""

    def createInstance(self):  # noqa: N802 - QGIS API
        return type(self)()

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def helpUrl(self) -> str:  # noqa: N802 - QGIS API
        return HELP_URL


class SlimDiffSRAlgorithm(SlimDiffSRBase):
    """Common parameters (weights, scale, bands, device, precision) and the worker call."""

    INPUT = "INPUT"
    WEIGHTS = "WEIGHTS"
    SCALE = "SCALE"
    BANDS = "BANDS"
    DEVICE = "DEVICE"
    PRECISION = "PRECISION"

    def group(self) -> str:
        return tr("Super-resolution")

    def groupId(self) -> str:  # noqa: N802 - QGIS API
        return "superresolution"

    # -- parameters --------------------------------------------------------------------
    def add_model_parameters(self) -> None:
        self.addParameter(
            file_parameter(
                self.WEIGHTS, tr("Model weights (empty: bundled default model)"), file_filter=WEIGHTS_FILTER
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.SCALE,
                tr("Scale (for weights that do not record it, or to pick a bundled model)"),
                options=scale_choices(),
                defaultValue=0,
            )
        )
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

    def checkParameterValues(self, parameters: dict[str, Any], context: QgsProcessingContext):  # noqa: N802
        """Report what the parameters alone show to be wrong before anything starts.

        QGIS shows this message once (one line in qgis_process, one message box in the
        dialog); an exception from a run is repeated by QGIS itself (qgis_process prints it
        three times, whatever the algorithm), so every check that needs no pixels is made
        here. The backend checks the same things again for callers that skip this step.
        """
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        problem = self.parameter_problem(parameters, context)
        return problem is None, problem or ""

    def parameter_problem(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str | None:
        """The first problem :meth:`checkParameterValues` reports, or None."""
        try:
            locate_python(backend_python_setting(), env_dir=backend_env_dir())
        except WorkerError as exc:
            return str(exc)
        weights = self.weights_path(parameters, context)
        if weights and not Path(weights).is_file():
            return tr("weights file not found: {}; check the path").format(weights)
        scale = self.scale(parameters, context)
        bundled = bundled_scales()
        if not weights and scale is not None and scale not in bundled:
            return tr(
                "there is no bundled x{} model (bundled: {}); choose one of those or a weights file for x{}"
            ).format(scale, ", ".join(f"x{s}" for s in bundled) or tr("none"), scale)
        try:
            bands = parse_bands(self.parameterAsString(parameters, self.BANDS, context)) or ()
        except ValueError as exc:
            return str(exc)
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            return None
        if layer.providerType() != "gdal":
            return tr(
                "layer '{}' is not a file-based raster ({}); save it as a GeoTIFF first "
                "(Raster > Conversion > Translate)"
            ).format(layer.name(), layer.providerType())
        if any(not 1 <= b <= layer.bandCount() for b in bands):
            return tr("band(s) {} do not all exist; '{}' has bands 1 to {}").format(
                ",".join(map(str, bands)), layer.name(), layer.bandCount()
            )
        return None

    def weights_path(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str | None:
        """The chosen weights file, absolute; None for the bundled model."""
        return absolute(self.parameterAsFile(parameters, self.WEIGHTS, context)) or None

    def scale(self, parameters: dict[str, Any], context: QgsProcessingContext) -> int | None:
        """The chosen scale; None: from the weights file (or the bundled default)."""
        index = self.parameterAsEnum(parameters, self.SCALE, context)
        return SCALES[index - 1] if index > 0 else None

    def model_options(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        """The request fields both algorithms share (None = the backend's default)."""
        try:
            bands = parse_bands(self.parameterAsString(parameters, self.BANDS, context))
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from None
        return {
            "weights": self.weights_path(parameters, context),
            "scale": self.scale(parameters, context),
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
        return layer, absolute(layer.source())

    def run_worker(self, request: dict[str, Any], feedback: QgsProcessingFeedback) -> dict[str, Any]:
        """The worker call with its failures turned into QgsProcessingException."""
        try:
            return run_request(
                request,
                feedback,
                setting=backend_python_setting(),
                env_dir=backend_env_dir(),
                trace=log_trace,
            )
        except WorkerCancelledError as exc:
            raise QgsProcessingException(str(exc)) from None
        except WorkerError as exc:
            # An environment that lacks a package: the worker says 'make install', which users
            # who installed the plugin from a zip cannot run; the setup algorithm repairs it.
            repair = f"{SETUP_HINT.replace(' once', ' again')} to repair it"
            message = str(exc).replace(MAKE_INSTALL_HINT, repair)
            raise QgsProcessingException(tr("SlimDiffSR: {}").format(message)) from None
