"""SlimDiffSR for QGIS: super-resolution of rasters (x4/x8) as Processing algorithms.

QGIS imports this package (installed as ``slimdiffsr``) and calls ``classFactory``; the
desktop passes its interface, ``qgis_process`` passes None.
"""


def classFactory(iface):  # noqa: N802 - QGIS plugin entry point
    from .plugin.plugin import SlimDiffSRPlugin

    return SlimDiffSRPlugin(iface)
