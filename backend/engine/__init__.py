"""Georeferenced, streaming, seamless tiled super-resolution of rasters.

Public API (used by the QGIS worker process and the command line; kept stable):

* :func:`upscale_raster` ``(input, output, model=None, options=None, progress=None,
  cancel=None) -> UpscaleReport``
* :class:`UpscaleOptions`, :class:`Progress`, :class:`UpscaleReport`
* :class:`EngineError` (one-line user-facing message), :class:`EngineCancelled`
* :class:`TilePlan` / :func:`make_plan`, :class:`Blender`: the tile plan and the
  order-independent blending, usable by other executors (several GPUs, a cluster).

See docs/engine.md for options, defaults and how they were measured.
"""

from backend.engine.blender import Blender
from backend.engine.options import EngineCancelled, EngineError, Progress, UpscaleOptions, UpscaleReport
from backend.engine.plan import TilePlan, make_plan
from backend.engine.run import upscale_raster

__all__ = [
    "Blender",
    "EngineCancelled",
    "EngineError",
    "Progress",
    "TilePlan",
    "UpscaleOptions",
    "UpscaleReport",
    "make_plan",
    "upscale_raster",
]
