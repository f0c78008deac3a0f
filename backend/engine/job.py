"""One upscale job, whoever computes its tiles: checks, plan, output spec, atomic file, report.

The local engine (:mod:`backend.engine.run`) and the cluster (:mod:`backend.engine.cluster`)
differ only in where the windows are computed. Everything around that (refusing a bad
request before a model loads, choosing the tile and overlap from what the model is, the
output's layout and provenance, the temporary file that becomes the output only when it
is complete, the report) is defined here once, so the two executors cannot drift apart.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio
from rasterio.errors import RasterioError

from backend import __version__
from backend.engine.options import EngineError, UpscaleOptions, UpscaleReport
from backend.engine.plan import TilePlan, make_plan
from backend.engine.radiometry import Radiometry
from backend.engine.reader import SourceInfo, TileReader, inspect_source
from backend.engine.writer import (
    BIGTIFF_THRESHOLD,
    GdalErrors,
    OutputSpec,
    TempOutput,
    check_disk_space,
    check_not_a_source,
    check_paths,
    copy_metadata,
    estimate_bytes,
    output_profile,
    remove_stale_parts,
)
from backend.errors import one_line

DEFAULT_TILE_OUT = 768
"""Default tile side in output pixels of the paper's student at a batch of four; other
models and batches get the tile of the same activation memory (``default_tile``)."""
MAX_TILE_OUT = 2048
"""Largest automatic tile side in output pixels."""
MAX_TILE_OUT_CPU = 1280
"""Largest automatic tile side on the CPU: there the network's speed per pixel falls once a
tile's activations outgrow the caches (bundled model, bf16, 2 cores: 2.1 output Mpx/s for
512-1024 px tiles, 2.0 at 1472, 1.5 at 2048), which costs more than the extra overlap of
smaller tiles."""
STRIP_BUDGET_MB = 256
"""Memory for the blend accumulators of one strip of tiles across the output."""
FULL_RES_WIDTH = 64
"""Channels at output resolution of the paper's student (its tiny autoencoder width)."""
DEFAULT_BATCH = 4
DEFAULT_OVERLAP_OUT = 128
"""Default overlap in output pixels for weights that record no receptive margin (32 input
pixels at x4, 16 at x8): about twice the measured margin of the paper's student (55
output pixels), so the quarter discarded at each interior edge plus half the ramp covers
it; see docs/engine.md."""
MIN_OVERLAP_OUT = 64
"""Smallest default overlap in output pixels: its blend ramp (half of it) fades the small
difference the global operations make between neighbouring tiles over 32 pixels."""
GDAL_CACHE_MB = 128


def default_batch(device_type: str, parallel: int = 1) -> int:
    """Tiles per model call: 4 on a GPU; on the CPU the tiles its network runs side by side
    (``parallel``: OpenVINO's streams, else 1, where a batch runs no faster than its tiles
    one by one and only multiplies the memory)."""
    return DEFAULT_BATCH if device_type == "cuda" else max(1, parallel)


def max_tile_out(device_type: str) -> int:
    """The automatic tile's upper bound in output pixels on a ``device_type`` device."""
    return MAX_TILE_OUT if device_type == "cuda" else MAX_TILE_OUT_CPU


def default_tile(
    scale: int,
    full_res_width: int = FULL_RES_WIDTH,
    batch: int = DEFAULT_BATCH,
    out_width: int = 0,
    bands: int = 3,
    block: int = 512,
    max_side: int = MAX_TILE_OUT,
) -> int:
    """Default tile in input pixels: the activation memory of the paper's student in
    ``DEFAULT_TILE_OUT`` tiles and batches of ``DEFAULT_BATCH``, spent on a model with
    ``full_res_width`` channels at output resolution and a batch of ``batch``, and small
    enough that one strip of blend accumulators across an output ``out_width`` wide (a tile
    plus a block high, ``bands`` x float32) stays within ``STRIP_BUDGET_MB``.

    Larger tiles waste less of the network's work on overlaps (a 1024^2 raster at x4 in
    768 px tiles computes 1.41x its area, in 2048 px tiles 1.14x), so a narrower model or a
    batch of one gets the larger tile the same memory allows; the strip bound keeps memory
    independent of the raster's width as well as of its height. ``max_side`` caps it
    (:func:`max_tile_out`).
    """
    budget = DEFAULT_TILE_OUT**2 * FULL_RES_WIDTH * DEFAULT_BATCH
    side = int((budget / (max(1, full_res_width) * max(1, batch))) ** 0.5)
    if out_width:
        side = min(side, STRIP_BUDGET_MB * 2**20 // (out_width * max(1, bands) * 4) - block)
    side = min(max_side, max(DEFAULT_TILE_OUT // 4, side // 64 * 64))
    return max(16, side // scale)


def default_overlap(scale: int, margin_out: int | None = None) -> int:
    """Default overlap in input pixels.

    Twice the model's measured receptive margin (``margin_out``, output pixels, recorded in
    its weights), at least ``MIN_OVERLAP_OUT``; ``DEFAULT_OVERLAP_OUT`` (sized for the
    paper's student) when the weights record none. The bundled models' margins (9 output
    px at x4, 16 at x8) give 64 output px: 1.25x faster than 128 on a 1024^2 raster, with
    no visible seam (docs/engine.md).
    """
    out = DEFAULT_OVERLAP_OUT if margin_out is None else max(MIN_OVERLAP_OUT, 2 * margin_out)
    return max(2, -(-out // scale))


@dataclass(frozen=True)
class ModelFacts:
    """What planning needs to know of the model, read from a local model or from what a
    cluster's worker reported about the one it loaded."""

    name: str
    scale: int
    width: int
    """Channels at output resolution (the tiny autoencoder's width): sets the tile memory."""
    multiple: int
    """Network input sides must be multiples of this."""
    margin: int | None
    """Measured receptive margin in output pixels, None when the weights record none."""
    device_type: str
    """'cpu' or 'cuda': where the tiles run (sets the default tile and batch)."""
    description: str
    """Device and precision as the log and the file's provenance name them."""
    precision: str
    parallel: int = 1
    """Tiles the network runs side by side on the CPU (sets the default batch there)."""


@dataclass
class Job:
    """One checked request: paths, the source's description, options and the clock.

    Made by :meth:`open` before any model loads, so that a bad path or input is refused in
    a fraction of a second; :meth:`plan_for` then fixes the plan once the model is known.
    """

    src: Path
    dst: Path
    info: SourceInfo
    options: UpscaleOptions
    t0: float
    batch: int = 1
    bytes_needed: int = 0
    _plan: TilePlan | None = None
    _radiometry: Radiometry | None = None

    @classmethod
    def open(cls, input: str | Path, output: str | Path, options: UpscaleOptions) -> Job:
        """Check the paths and the input (call inside :func:`gdal_env`)."""
        t0 = time.monotonic()
        src, dst = Path(input), Path(output)
        check_paths(src, dst)
        remove_stale_parts(dst)  # what killed runs left (before the free-space check: it frees space)
        info = inspect_source(src, options.bands, options.all_bands, options.nodata)
        check_not_a_source(dst, src, info.files)
        if options.batch_size is not None and options.batch_size < 1:
            raise EngineError("batch size must be at least 1")
        return cls(src, dst, info, options, t0)

    @property
    def count(self) -> int:
        """Output bands: the selected bands and the alpha band, if any."""
        return len(self.info.bands) + (1 if self.info.alpha else 0)

    def plan_for(self, model: ModelFacts) -> TilePlan:
        """The tile plan for ``model`` (options, else the measured defaults), after checking
        that the output fits the disk; also measures the global radiometry."""
        options, info = self.options, self.info
        scale = model.scale
        self.batch = options.batch_size or default_batch(model.device_type, model.parallel)
        tile = options.tile_size or default_tile(
            scale,
            model.width,
            self.batch,
            info.width * scale,
            len(info.bands),
            options.block_size,
            max_tile_out(model.device_type),
        )
        overlap = options.overlap if options.overlap is not None else default_overlap(scale, model.margin)
        if tile < 8 or overlap < 0:
            raise EngineError(
                f"tile size {tile} / overlap {overlap} invalid: use a tile of at least 8 input "
                "pixels and an overlap of 0 or more"
            )
        try:
            plan = make_plan(
                info.width, info.height, scale, tile, overlap, model.multiple, options.block_size
            )
        except ValueError as exc:
            raise EngineError(f"{exc}; choose a smaller --overlap or a larger --tile-size") from None
        self.bytes_needed = estimate_bytes(
            plan.out_width, plan.out_height, self.count, info.dtype, options.overviews, options.cog
        )
        check_disk_space(self.dst.parent, self.bytes_needed, options.cog)
        with TileReader(info) as reader:
            self._radiometry = reader.global_radiometry()
        self._plan = plan
        return plan

    def output_spec(self) -> OutputSpec:
        """The output file's layout, compression and finishing, from the plan and options."""
        plan, options, info = self.plan, self.options, self.info
        return OutputSpec(
            width=plan.out_width,
            height=plan.out_height,
            count=self.count,
            dtype=info.dtype,
            scale=plan.scale,
            nodata=info.nodata,
            compress=options.compress,
            block=options.block_size,
            bigtiff=self.bytes_needed > BIGTIFF_THRESHOLD,
            threads=str(options.io_threads) if options.io_threads else "ALL_CPUS",
            georeferenced=info.georeferenced,
            overviews=options.overviews,
            cog=options.cog,
        )

    @property
    def plan(self) -> TilePlan:
        """The tile plan (set by :meth:`plan_for`)."""
        if self._plan is None:
            raise RuntimeError("Job.plan_for must run first")
        return self._plan

    @property
    def radiometry(self) -> Radiometry:
        """The raster's global radiometry (measured by :meth:`plan_for`)."""
        if self._radiometry is None:
            raise RuntimeError("Job.plan_for must run first")
        return self._radiometry

    @contextlib.contextmanager
    def failures(self, temp: TempOutput) -> Iterator[None]:
        """Whatever goes wrong inside, ``temp``'s files are removed and the previous output
        stays; errors found after the checks are the run's (exit 1), memory exhaustion is
        a one-line error, anything else (Ctrl-C included) passes through unchanged."""
        try:
            yield
        except EngineError as exc:
            temp.discard()
            if exc.stage is None:
                exc.stage = "run"
            raise
        except MemoryError:
            temp.discard()
            raise EngineError(
                "the computer ran out of memory; lower the tile size or the batch size, or "
                "close other programs. The previous output, if any, was kept",
                "run",
            ) from None
        except BaseException:
            temp.discard()
            raise

    def provenance(self, model: ModelFacts) -> dict[str, str]:
        """The tags that say how the output was made (``model`` as it ran: the precision
        may change after :meth:`plan_for`, when int8 calibration succeeds)."""
        return {
            "SLIMDIFFSR_MODEL": model.name,
            "SLIMDIFFSR_SCALE": str(model.scale),
            "SLIMDIFFSR_PRECISION": model.precision,
            "SLIMDIFFSR_DEVICE": model.description,
            "SLIMDIFFSR_VERSION": __version__,
            "SLIMDIFFSR_SOURCE": self.src.name,
            "SLIMDIFFSR_BANDS": ",".join(map(str, self.info.bands)),
            **self.options.extra_tags,
        }

    def write(self, temp: TempOutput, model: ModelFacts, fill: Callable[[Any], int]) -> tuple[int, str]:
        """Create ``temp`` as the output GeoTIFF with the source's metadata and ``model``'s
        provenance, let ``fill`` write every block into it (returning the number of skipped
        tiles), then verify, finish and rename it over the target. Returns (skipped tiles,
        output CRS as WKT)."""
        spec = self.output_spec()
        with rasterio.open(self.src) as src:
            profile = output_profile(src, spec)
            crs_wkt = src.crs.to_wkt() if src.crs else ""
            temp.create()
            with GdalErrors.watch("writing the output"):
                try:
                    dst = rasterio.open(temp.path, "w", **profile)
                except RasterioError as exc:
                    raise EngineError(f"cannot create the output ({one_line(exc, 200)})") from None
                with dst:
                    copy_metadata(src, dst, self.info.bands, self.info.alpha, self.provenance(model))
                    skipped = fill(dst)
        temp.finish(spec)
        return skipped, crs_wkt

    def report(
        self, model: ModelFacts, skipped: int, crs_wkt: str, device: str, workers: list[str] | None = None
    ) -> UpscaleReport:
        """What was done, for the caller and the log."""
        plan, info = self.plan, self.info
        return UpscaleReport(
            input=str(self.src),
            output=str(self.dst),
            input_size=(info.width, info.height),
            output_size=(plan.out_width, plan.out_height),
            scale=plan.scale,
            bands=info.bands,
            dtype=info.dtype,
            crs=crs_wkt,
            georeferenced=info.georeferenced,
            model=model.name,
            device=device,
            tiles=len(plan),
            tiles_skipped=skipped,
            tile_size=plan.tile,
            overlap=plan.overlap,
            elapsed_s=self.elapsed,
            radiometry=self.radiometry.describe(),
            workers=workers or [],
        )

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def gdal_env() -> rasterio.Env:
    """The GDAL settings every job runs under: a bounded block cache, internal masks."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_TIFF_INTERNAL_MASK=True)
