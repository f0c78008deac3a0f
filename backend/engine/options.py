"""The engine's public value types: options in, progress out, a report at the end, errors.

These are the only types the QGIS worker process and the command line exchange with the
engine, so they are plain dataclasses with documented fields and no behaviour that
touches files or devices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backend.errors import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, Cancelled, SlimDiffSRError


class EngineError(SlimDiffSRError):
    """An expected failure of the engine, in one line for the user: what, why, what to do.

    ``stage`` is "input" for problems found in the request or the input (bad path, bands,
    nodata value, no valid pixel) and "run" for failures while computing or writing (read
    error in the middle of the raster, disk full, out of memory). ``None`` means found
    before any tile was computed, hence the input's; :func:`upscale_raster` marks errors
    raised after that as "run". The exit code follows: 2 for input, 1 for run.
    """

    def __init__(self, message: str, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return EXIT_FAILED if self.stage == "run" else EXIT_BAD_INPUT


class EngineCancelled(EngineError, Cancelled):  # noqa: N818 - reads better at call sites than ...Error
    """The run was cancelled by the caller (cancel callback, Ctrl-C); nothing was written."""

    exit_code = EXIT_CANCELLED


@dataclass
class UpscaleOptions:
    """What to compute and how. Every field has a usable default.

    Sizes (``tile_size``, ``overlap``) are in *input* (low-resolution) pixels. ``None``
    means "the measured default" (see docs/engine.md): the largest tile whose activations
    fit the memory of 768-pixel tiles of the paper's student in a batch of four (2048
    output pixels for the bundled compact model on the CPU), shrunk evenly to the raster so
    overlaps stay as asked, and an overlap of 128 output pixels (32 input pixels at x4).
    """

    weights: str | Path | None = None
    """Weights file (.safetensors or release .pkl); None: the bundled default model."""
    scale: int | None = None
    """2, 4 or 8; None: the scale recorded in the weights (4 for the bundled default)."""
    bands: str | tuple[int, ...] | None = None
    """1-based input bands, "4,3,2" style; None: RGB by colour interpretation, else first three."""
    all_bands: bool = False
    """Process every band (alpha excluded) in groups of three. Non-visible bands are outside
    the model's training distribution: the result is plausible texture, not measured signal."""
    device: str = "auto"
    precision: str = "auto"
    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    """Tiles per model call; None: 4 on a GPU; on the CPU 2 where OpenVINO runs two tiles
    side by side (at least 2 cores), else 1."""
    cog: bool = False
    """Write a Cloud Optimized GeoTIFF (implies overviews)."""
    overviews: bool = False
    """Build internal overviews (average resampling)."""
    nodata: float | None = None
    """Override the input's nodata value (e.g. an undeclared zero collar); None: as declared."""
    compress: str = "deflate"
    block_size: int = 512
    """Output GeoTIFF block size; blocks are also the unit of finalization."""
    prefetch_batches: int = 2
    """Batches read ahead of the model by the reader thread."""
    io_threads: int | None = None
    """GDAL compression threads for the output; None: all CPUs."""
    extra_tags: dict[str, str] = field(default_factory=dict)
    """Additional dataset tags written into the output."""
    scheduler: str | None = None
    """A Dask scheduler (``tcp://HOST:PORT``) or ``local:N`` (a local cluster of N worker
    processes) to run on; None or "": this process's threads (docs/cluster.md)."""
    region_tiles: int | None = None
    """On a cluster: windows per region side (one task each); None: regions of about 2048
    output pixels."""
    task_resources: dict[str, float] = field(default_factory=dict)
    """On a cluster: resources each task needs (``{"GPU": 1}``), matching workers started
    with ``--resources GPU=1``."""


@dataclass(frozen=True)
class Progress:
    """Reported at least once per batch: ``fraction`` in [0, 1], tiles, ETA in seconds."""

    fraction: float
    tiles_done: int
    tiles_total: int
    elapsed_s: float
    eta_s: float | None
    stage: str = "tiles"


@dataclass
class UpscaleReport:
    """What was done; ``as_dict()`` is JSON-serialisable (the worker sends it as is)."""

    input: str
    output: str
    input_size: tuple[int, int]
    """(width, height) in input pixels."""
    output_size: tuple[int, int]
    scale: int
    bands: tuple[int, ...]
    """Input band indexes (1-based) written as output bands 1..n (alpha, if any, follows)."""
    dtype: str
    crs: str
    """The output CRS as WKT (empty when the input had none)."""
    georeferenced: bool
    """False when the input had no geotransform (a plain JPEG or PNG): then the output has
    none either, rather than a made-up one."""
    model: str
    device: str
    """``SuperResolver.description``: device and precision."""
    tiles: int
    tiles_skipped: int
    tile_size: int
    overlap: int
    elapsed_s: float
    radiometry: list[dict[str, Any]] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)
    """On a cluster: each worker's address and device; empty for a local run."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
