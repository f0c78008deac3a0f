"""What Dask workers run: model info, raster statistics, regions, seams, whole files.

Plain functions of picklable arguments, so that any Dask worker with the backend
installed runs them; nothing here imports dask. Each worker process loads a model once
(:func:`worker_model`) and reuses it for every task it runs, on the device it picks
itself (a GPU worker its GPU).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.engine.blender import Blender, Piece, contribution, sum_contributions
from backend.engine.finish import FinishedBlock, finish_block
from backend.engine.job import gdal_env
from backend.engine.options import EngineCancelled, UpscaleOptions
from backend.engine.plan import TilePlan
from backend.engine.radiometry import Radiometry
from backend.engine.reader import SourceInfo, TileReader
from backend.engine.regions import Region, Seam

if TYPE_CHECKING:
    from backend.inference import ColorStats, GlobalStatistics, SuperResolver
    from backend.regimes import Mixture


@dataclass(frozen=True)
class ModelSpec:
    """Which model a worker loads: weights path (None: bundled default), scale, device, precision."""

    weights: str | None
    scale: int | None
    device: str
    precision: str


_MODELS: dict[ModelSpec, SuperResolver] = {}
_LOCK = threading.Lock()


def worker_model(spec: ModelSpec) -> SuperResolver:
    """This process's model for ``spec``: loaded on first use, then reused by every task."""
    with _LOCK:
        if spec not in _MODELS:
            from backend.engine.model import resolve_model

            options = UpscaleOptions(
                weights=spec.weights, scale=spec.scale, device=spec.device, precision=spec.precision
            )
            _MODELS[spec] = resolve_model(None, options)
        return _MODELS[spec]


def model_info(spec: ModelSpec) -> dict[str, Any]:
    """Load the model on this worker and say what the client needs to plan: scale, the
    network's size multiple, width, receptive margin, colour match, device."""
    resolver = worker_model(spec)
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "model": resolver.title,
        "scale": resolver.scale,
        "multiple": resolver.multiple,
        "vae_channels": resolver.model.config.vae_channels,
        "margin": resolver.receptive_margin,
        "color_match": bool(getattr(resolver, "color_match", True)),
        "device": resolver.description,
        "device_type": resolver.device.type,
    }


@dataclass(frozen=True)
class RasterStatistics:
    """What every region must share so that the cluster computes the local engine's picture:
    the experts' mixture (degradation-aware weights), the network's global statistics and
    the colour-match statistics."""

    network: GlobalStatistics | None
    color: list[ColorStats]
    regime: Mixture | None = None


def raster_statistics(
    spec: ModelSpec, plan: TilePlan, info: SourceInfo, radiometry: Radiometry
) -> RasterStatistics:
    """The raster's expert mixture, network and colour-match statistics, gathered as the
    local engine gathers them (one pass over the raster or its reduced copy, whatever the
    regions)."""
    from backend.engine.model import ModelStep, adapt_to_raster, gather_statistics

    with gdal_env():
        resolver = adapt_to_raster(info, radiometry, worker_model(spec))
        step = ModelStep(resolver, radiometry)
        gather_statistics(plan, info, step)
    return RasterStatistics(step.statistics, list(step.stats), resolver.regime)


@dataclass(frozen=True)
class RegionJob:
    """Everything a region task needs (small: no pixels)."""

    spec: ModelSpec
    plan: TilePlan
    info: SourceInfo
    radiometry: Radiometry
    stats: RasterStatistics
    batch: int
    region: Region
    seams: dict[int, tuple[tuple[int, int], ...]]
    """Seam index -> its blocks, for the seams this region computes pieces for."""


def run_region(job: RegionJob) -> dict[Any, Any]:
    """Read, run and blend one region's windows.

    Returns ``{"finished": [FinishedBlock], "tiles": n, "skipped": n, seam: {block: [Piece]}}``;
    the finished blocks go to the writer, the pieces to the seam tasks.
    """
    from backend.engine.model import ModelStep
    from backend.engine.run import _run_batch

    plan, info = job.plan, job.info
    step = ModelStep(worker_model(job.spec).for_regime(job.stats.regime), job.radiometry)
    step.statistics = job.stats.network
    step.stats = list(job.stats.color)
    channels = len(info.bands)
    blender = Blender(plan, channels, job.region.own_blocks)
    seam_of = {b: s for s, blocks in job.seams.items() for b in blocks}
    out: dict[Any, Any] = {s: {} for s in job.seams}
    finished: list[FinishedBlock] = []
    skipped = 0
    with gdal_env(), TileReader(info, job.radiometry) as reader:
        windows = [plan.window(i) for i in job.region.windows]
        for i in range(0, len(windows), job.batch):
            batch = [reader.read_tile(w) for w in windows[i : i + job.batch]]
            for window, values in _run_batch(step, batch, {}):
                skipped += values is None
                if values is not None:
                    weight = plan.weight(window)
                    for block in plan.blocks_of(window):
                        s = seam_of.get((block.row, block.col))
                        if s is not None:
                            out[s].setdefault((block.row, block.col), []).append(
                                contribution(plan, window, values, weight, block)
                            )
                for block, blended in blender.add(window, values):
                    finished.append(finish_block(plan, info, job.radiometry, reader, block, blended))
    out.update(finished=finished, tiles=len(windows), skipped=skipped)
    return out


def pick(result: dict[Any, Any], key: Any) -> Any:
    """One part of a region's result (runs where the result lies: no transfer of the rest)."""
    if key == "finished":
        return {"finished": result["finished"], "tiles": result["tiles"], "skipped": result["skipped"]}
    return result[key]


def finish_seam(
    plan: TilePlan,
    info: SourceInfo,
    radiometry: Radiometry,
    seam: Seam,
    *parts: dict[tuple[int, int], list[Piece]],
) -> list[FinishedBlock]:
    """Blend and finish a seam's blocks from the pieces of the regions around it."""
    done = []
    with gdal_env(), TileReader(info) as masks:
        for key in seam.blocks:
            pieces = [p for part in parts for p in part.get(key, [])]
            block = plan.block_at(*key)
            blended = sum_contributions(plan, block, pieces, len(info.bands))
            done.append(finish_block(plan, info, radiometry, masks, block, blended))
    return done


def upscale_file(
    spec: ModelSpec, input: str, output: str, options: UpscaleOptions, cancel_event: str | None = None
) -> dict[str, Any]:
    """One file of a batch, on this worker with its cached model: the local engine.

    ``cancel_event``: the name of a Dask Event the client sets on Ctrl-C; polled at most
    twice a second (a round trip to the scheduler), so a cancelled batch leaves no
    temporary file and no output of a file still running."""
    from backend.engine.run import upscale_raster

    cancel = None
    if cancel_event:
        from distributed import Event

        event, last = Event(cancel_event), [0.0, False]

        def cancel() -> bool:
            now = time.monotonic()
            if now - last[0] > 0.5:
                last[0], last[1] = now, bool(event.is_set())
            return bool(last[1])

        if cancel():
            raise EngineCancelled("cancelled before it started")
    resolver = worker_model(spec)
    report = upscale_raster(input, output, resolver, replace(options, scheduler=None), cancel=cancel)
    result = report.as_dict()
    result["model"] = resolver.title
    result["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    return result


def exists(path: str) -> bool:
    """Whether this worker sees ``path`` (the shared-storage check)."""
    return Path(path).exists()
