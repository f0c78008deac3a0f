"""The 'SlimDiffSR' Processing provider: id ``slimdiffsr``."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms.assess import AssessAlgorithm
from .algorithms.setup import SetupAlgorithm
from .algorithms.upscale import UpscaleAlgorithm
from .settings import register_settings, unregister_settings

ICON_PATH = Path(__file__).resolve().parent.parent / "resources" / "icon.svg"


def plugin_icon() -> QIcon:
    return QIcon(str(ICON_PATH))


class SlimDiffSRProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "slimdiffsr"

    def name(self) -> str:
        return "SlimDiffSR"

    def longName(self) -> str:  # noqa: N802 - QGIS API
        return "SlimDiffSR super-resolution"

    def icon(self) -> QIcon:
        return plugin_icon()

    def svgIconPath(self) -> str:  # noqa: N802 - QGIS API
        return str(ICON_PATH)

    def load(self) -> bool:
        register_settings(self.icon())
        self.refreshAlgorithms()
        return True

    def unload(self) -> None:
        unregister_settings()

    def loadAlgorithms(self) -> None:  # noqa: N802 - QGIS API
        self.addAlgorithm(UpscaleAlgorithm())
        self.addAlgorithm(AssessAlgorithm())
        self.addAlgorithm(SetupAlgorithm())

    def supportedOutputRasterLayerExtensions(self) -> list[str]:  # noqa: N802 - QGIS API
        # The backend writes GeoTIFF only (tiled, BigTIFF when needed, optionally COG).
        return ["tif"]

    def defaultRasterFileExtension(self) -> str:  # noqa: N802 - QGIS API
        return "tif"
