"""The object QGIS creates through ``classFactory``; it only registers the provider.

``qgis_process`` calls ``initProcessing()`` alone, the desktop calls ``initGui()``: both
end in the same idempotent registration.
"""

from __future__ import annotations

from qgis.core import QgsApplication

from .provider import SlimDiffSRProvider


class SlimDiffSRPlugin:
    def __init__(self, iface=None) -> None:
        self.iface = iface
        self.provider: SlimDiffSRProvider | None = None  # keep a reference: QGIS does not own it

    def initProcessing(self) -> None:  # noqa: N802 - QGIS API
        if self.provider is None:
            self.provider = SlimDiffSRProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - QGIS API
        self.initProcessing()

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
