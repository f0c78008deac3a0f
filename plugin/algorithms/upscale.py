"""'SlimDiffSR Upscale': super-resolve a raster layer to a GeoTIFF 2, 4 or 8 times finer."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock, so no way to tell a dead run's files; leave them
    fcntl = None  # type: ignore[assignment]

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from ...backend.nodata import nodata_problem
from ..settings import dask_scheduler_setting
from .base import SlimDiffSRAlgorithm, absolute, advanced, bundled_scales, integer_parameter, tr

OUTPUT_EXTENSIONS = (".tif", ".tiff")
QGIS_DATA_TYPES = {1: "uint8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32", 7: "float64"}
"""Qgis.DataType values (Byte ... Float64) -> the numpy names the engine's nodata rule uses."""


def remove_partial(output: Path) -> None:
    """Remove temporary files beside ``output`` that no running process owns any more.

    The engine removes its own temporary files; this covers a worker that was killed
    (cancel escalated to SIGKILL, out of memory) before it could. A run's files are
    ``.<stem>.<8 hex digits>.part...`` and a live run holds an exclusive ``flock`` on its
    ``.part.tif``; files another run (this QGIS, another one, the command line) is still
    writing are locked and left alone, and so is any other output whose name starts with
    ``<stem>.``. The backend applies the same rule (backend/engine/writer.py).
    """
    if fcntl is None:
        return
    pattern = re.compile(rf"\.{re.escape(output.stem)}\.(?P<token>[0-9a-f]{{8}})\.part(?:\..*)?")
    groups: dict[str, list[Path]] = {}
    try:
        for p in output.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m:
                groups.setdefault(m["token"], []).append(p)
    except OSError:
        return
    for token, files in groups.items():
        main = output.with_name(f".{output.stem}.{token}.part.tif")
        fd = None
        try:
            if main.exists():
                fd = os.open(main, os.O_RDONLY)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            for p in files:
                try:
                    p.unlink()
                except OSError:
                    pass
        except OSError:
            continue  # locked: a live run's files
        finally:
            if fd is not None:
                os.close(fd)


class UpscaleAlgorithm(SlimDiffSRAlgorithm):
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    BATCH_SIZE = "BATCH_SIZE"
    NODATA = "NODATA"
    ALL_BANDS = "ALL_BANDS"
    COG = "COG"
    OVERVIEWS = "OVERVIEWS"
    OUTPUT = "OUTPUT"

    def name(self) -> str:
        return "upscale"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return tr("SlimDiffSR Upscale")

    def tags(self) -> list[str]:
        words = ("super-resolution", "upscale", "sharpen", "resample", "deep learning", "x2", "x4", "x8")
        return [tr(t) for t in words]

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        bundled = tr(" or ").join(f"x{s}" for s in bundled_scales()) or tr("none")
        return tr(
            "<p>Makes a raster 2, 4 or 8 times finer (for example 10 m pixels become 2.5 m at x4) with the "
            "SlimDiffSR neural network, which restores sharper detail than bicubic resampling.</p>"
            "<p><b>Input</b>: a file-based raster (GeoTIFF, JP2, ...), 8- or 16-bit or float, with 1 band or "
            "3 bands used as red, green, blue. For multispectral imagery choose the bands, e.g. "
            "<code>4,3,2</code> for Landsat 8 true colour. Nodata areas stay nodata.</p>"
            "<p><b>Output</b>: a tiled GeoTIFF in the same CRS, covering the same area, with the same data "
            "type. Only the chosen bands are written.</p>"
            "<p><b>Model weights</b>: leave empty for the bundled model, or choose a SlimDiffSR "
            "<code>.safetensors</code> file or a release checkpoint (<code>.pkl</code>). Set "
            "<b>Scale</b> if the file does not record it, or to pick a bundled model ({}); x2 and any "
            "other scale without a bundled model needs a weights file trained for it.</p>"
            "<p><b>Device</b> auto uses an NVIDIA GPU when one is usable, otherwise the CPU; "
            "<b>precision</b> auto picks the fastest one that stays accurate. The log names both.</p>"
            "<p>Large rasters are processed tile by tile with overlapping, blended tiles, so memory "
            "stays bounded and no seams appear; lower the tile size if the GPU runs out of memory. "
            "Tip: run <i>SlimDiffSR Quality Check</i> on a sample first to see whether "
            "super-resolution beats bicubic on your imagery.</p>"
        ).format(bundled)

    def initAlgorithm(self, config: dict[str, Any] | None = None) -> None:  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, tr("Input raster")))
        self.add_model_parameters()
        self.addParameter(
            integer_parameter(self.TILE_SIZE, tr("Tile size in input pixels (0: automatic)"), 0, 0, 4096)
        )
        self.addParameter(
            integer_parameter(self.OVERLAP, tr("Tile overlap in input pixels (-1: automatic)"), -1, -1, 1024)
        )
        self.addParameter(integer_parameter(self.BATCH_SIZE, tr("Tiles per batch (0: automatic)"), 0, 0, 256))
        self.addParameter(
            advanced(
                QgsProcessingParameterNumber(
                    self.NODATA,
                    tr("Input nodata value (overrides the layer's, e.g. 0 for an undeclared black collar)"),
                    type=QgsProcessingParameterNumber.Double,
                    optional=True,
                )
            )
        )
        for name, label, default in (
            (
                self.ALL_BANDS,
                tr("Process every band in groups of three (non-visible bands: plausible texture only)"),
                False,
            ),
            (self.OVERVIEWS, tr("Build overviews (faster display)"), True),
            (self.COG, tr("Write a Cloud Optimized GeoTIFF (COG)"), False),
        ):
            self.addParameter(advanced(QgsProcessingParameterBoolean(name, label, default)))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, tr("Super-resolved raster")))

    def parameter_problem(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str | None:
        """The shared checks, then the output's format (the backend writes GeoTIFF only) and a
        nodata value the layer's data type cannot hold (the engine's rule and words)."""
        problem = super().parameter_problem(parameters, context)
        if problem is None:
            output = Path(self.parameterAsOutputLayer(parameters, self.OUTPUT, context))
            if output.suffix.lower() not in OUTPUT_EXTENSIONS:
                problem = tr("output '{}' is not a GeoTIFF; SlimDiffSR writes .tif files only").format(
                    output.name
                )
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if problem is None and layer is not None and parameters.get(self.NODATA) not in (None, ""):
            dtype = QGIS_DATA_TYPES.get(int(layer.dataProvider().dataType(1)))
            if dtype is not None:
                problem = nodata_problem(self.parameterAsDouble(parameters, self.NODATA, context), dtype)
        return problem

    def processAlgorithm(  # noqa: N802 - QGIS API
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        layer, source = self.input_path(parameters, context)
        output = absolute(self.parameterAsOutputLayer(parameters, self.OUTPUT, context))
        options = self.model_options(parameters, context)
        tile = self.parameterAsInt(parameters, self.TILE_SIZE, context)
        overlap = self.parameterAsInt(parameters, self.OVERLAP, context)
        batch = self.parameterAsInt(parameters, self.BATCH_SIZE, context)
        nodata = parameters.get(self.NODATA)
        options.update(
            nodata=None if nodata in (None, "") else self.parameterAsDouble(parameters, self.NODATA, context),
            all_bands=self.parameterAsBoolean(parameters, self.ALL_BANDS, context) or None,
            tile_size=tile if tile > 0 else None,
            overlap=overlap if overlap >= 0 else None,
            batch_size=batch if batch > 0 else None,
            cog=self.parameterAsBoolean(parameters, self.COG, context),
            overviews=self.parameterAsBoolean(parameters, self.OVERVIEWS, context),
            scheduler=dask_scheduler_setting() or None,
        )
        feedback.pushInfo(
            tr("input: {} ({}x{} pixels, {} bands, {})").format(
                layer.name(),
                layer.width(),
                layer.height(),
                layer.bandCount(),
                layer.crs().authid() or layer.crs().description(),
            )
        )
        request = {"type": "upscale", "input": source, "output": output, "options": options}
        try:
            report = self.run_worker(request, feedback)
        except QgsProcessingException:
            remove_partial(Path(output))
            raise
        self.log_report(report, feedback)
        return {self.OUTPUT: output}

    @staticmethod
    def log_report(report: dict[str, Any], feedback: QgsProcessingFeedback) -> None:
        """The engine's summary (the worker already logged the device, precision and model)."""
        size = report.get("output_size")
        if isinstance(size, list) and len(size) == 2:
            feedback.pushInfo(tr("output: {}x{} pixels (x{})").format(size[0], size[1], report.get("scale")))
        if "tiles" in report:
            skipped = report.get("tiles_skipped", 0)
            feedback.pushInfo(tr("tiles: {} ({} empty, skipped)").format(report["tiles"], skipped))
        if "device" in report:
            # int8 is settled after calibrating on this raster, after the worker's first log line
            feedback.pushInfo(tr("ran as: {}").format(report["device"]))
        if "elapsed_s" in report:
            feedback.pushInfo(tr("time: {:.1f} s").format(float(report["elapsed_s"])))
