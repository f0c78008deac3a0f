"""SlimDiffSR backend: model, weights, inference and the tiled raster engine.

Everything here is importable and testable without QGIS; the QGIS plugin only turns
dialog parameters into calls of this package (run in a separate worker process).
"""

__version__ = "0.1.0"
