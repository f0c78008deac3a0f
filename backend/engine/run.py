"""``upscale_raster``: one raster from input path to finished GeoTIFF.

Data path: plan -> reader thread (windowed reads, global radiometry) -> batches -> model
(main thread: SuperResolver on its device and precision) -> writer thread (blender, block
finalization, GeoTIFF writes) -> temporary file -> rename. The queues between the threads
are short, so memory stays bounded while the model never waits on disk.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from backend import __version__
from backend.engine.blender import Blender
from backend.engine.finish import finish_block
from backend.engine.options import EngineCancelled, EngineError, Progress, UpscaleOptions, UpscaleReport
from backend.engine.plan import TilePlan, Window, make_plan
from backend.engine.reader import SourceInfo, TileInput, TileReader, inspect_source
from backend.engine.writer import (
    BIGTIFF_THRESHOLD,
    GdalErrors,
    TempOutput,
    check_disk_space,
    check_not_a_source,
    check_paths,
    copy_metadata,
    estimate_bytes,
    output_profile,
    remove_stale_parts,
    write_block,
)

if TYPE_CHECKING:  # torch and the model load only once the input has passed its checks
    import torch

    from backend.engine.model import ModelLike, ModelStep

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
_DONE = object()

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


def default_batch(device: torch.device) -> int:
    """Tiles per model call: 4 on a GPU; 1 on the CPU, where a batch runs no faster than
    its tiles one by one and only multiplies the memory."""
    return DEFAULT_BATCH if device.type == "cuda" else 1


def max_tile_out(device: torch.device) -> int:
    """The automatic tile's upper bound in output pixels on ``device``."""
    return MAX_TILE_OUT if device.type == "cuda" else MAX_TILE_OUT_CPU


def default_tile(
    scale: int,
    full_res_width: int = FULL_RES_WIDTH,
    batch: int = DEFAULT_BATCH,
    out_width: int | None = None,
    bands: int = 3,
    block: int = 512,
    max_side: int = MAX_TILE_OUT,
) -> int:
    """Default tile in input pixels: the largest one whose full-resolution activations
    (side^2 x width x batch) stay within those of the paper's student at 768 px x 4, and
    whose strip of blend accumulators across the output (side + block rows x ``out_width``
    x ``bands`` float32) stays within ``STRIP_BUDGET_MB``.

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


def upscale_raster(
    input: str | Path,
    output: str | Path,
    model: ModelLike = None,
    options: UpscaleOptions | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    log: Callable[[str], None] | None = None,
) -> UpscaleReport:
    """Super-resolve ``input`` into a georeferenced GeoTIFF at ``output``.

    ``model``: a SuperResolver, a LoadedWeights, a weights path, or None (``options.weights``
    or the bundled default). ``progress`` is called at least once per batch; ``cancel`` is
    polled at least once per batch and a True answer stops the run. On any failure, cancel
    or Ctrl-C nothing is left at ``output`` and temporary files are removed.

    Raises EngineError (one-line message for the user), EngineCancelled (a subclass), or
    KeyboardInterrupt unchanged.

    With ``options.scheduler`` the same plan runs on a Dask cluster
    (:mod:`backend.engine.cluster`; ``log`` then receives the cluster's address, workers
    and devices); without, on this process's threads, and dask is never imported.
    """
    options = options or UpscaleOptions()
    if options.scheduler:
        from backend.engine.cluster import upscale_raster_on_cluster

        return upscale_raster_on_cluster(input, output, model, options, progress, cancel, log)
    t0 = time.monotonic()
    src_path, dst_path = Path(input), Path(output)
    check_paths(src_path, dst_path)
    remove_stale_parts(dst_path)  # what killed runs left (before the free-space check: it frees space)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_TIFF_INTERNAL_MASK=True):
        info = inspect_source(src_path, options.bands, options.all_bands, options.nodata)
        check_not_a_source(dst_path, src_path, info.files)
        if options.batch_size is not None and options.batch_size < 1:
            raise EngineError("batch size must be at least 1")
        # Imported only now: a bad path or input is refused in a fraction of a second instead
        # of after the seconds torch takes to load.
        from backend.engine.calibration import calibrate_on_raster
        from backend.engine.model import ModelStep, resolve_model

        resolver, model_name = resolve_model(model, options)
        scale = resolver.scale
        batch = options.batch_size or default_batch(resolver.device)
        width = resolver.model.config.vae_channels
        tile = options.tile_size or default_tile(
            scale,
            width,
            batch,
            info.width * scale,
            len(info.bands),
            options.block_size,
            max_tile_out(resolver.device),
        )
        overlap = (
            options.overlap
            if options.overlap is not None
            else default_overlap(scale, resolver.receptive_margin)
        )
        if tile < 8 or overlap < 0:
            raise EngineError(
                f"tile size {tile} / overlap {overlap} invalid: use a tile of at least 8 input "
                "pixels and an overlap of 0 or more"
            )
        try:
            plan = make_plan(
                info.width, info.height, scale, tile, overlap, resolver.multiple, options.block_size
            )
        except ValueError as exc:
            raise EngineError(f"{exc}; choose a smaller --overlap or a larger --tile-size") from None
        count = len(info.bands) + (1 if info.alpha else 0)
        size = estimate_bytes(
            plan.out_width, plan.out_height, count, info.dtype, options.overviews, options.cog
        )
        check_disk_space(dst_path.parent, size, options.cog)
        with TileReader(info) as reader:
            radiometry = reader.global_radiometry()
        step = ModelStep(resolver, radiometry)
        bigtiff = size > BIGTIFF_THRESHOLD
        temp = TempOutput(dst_path)
        try:
            calibrate_on_raster(plan, info, step)  # int8 on CPUs without bf16 (precision auto/int8)
            cache = _estimate_stats(plan, info, step, options, batch, cancel)
            with rasterio.open(src_path) as src:
                provenance = {
                    "SLIMDIFFSR_MODEL": model_name,
                    "SLIMDIFFSR_SCALE": str(scale),
                    "SLIMDIFFSR_PRECISION": resolver.precision,
                    "SLIMDIFFSR_DEVICE": resolver.description,
                    "SLIMDIFFSR_VERSION": __version__,
                    "SLIMDIFFSR_SOURCE": src_path.name,
                    "SLIMDIFFSR_BANDS": ",".join(map(str, info.bands)),
                    **options.extra_tags,
                }
                threads = str(options.io_threads) if options.io_threads else "ALL_CPUS"
                profile = output_profile(
                    src,
                    count,
                    scale,
                    info.nodata,
                    options.compress,
                    options.block_size,
                    bigtiff,
                    threads,
                    info.georeferenced,
                )
                crs_wkt = src.crs.to_wkt() if src.crs else ""
                temp.create()
                with GdalErrors.watch("writing the output"):
                    try:
                        dst = rasterio.open(temp.path, "w", **profile)
                    except RasterioError as exc:
                        raise EngineError(
                            f"cannot create the output ({str(exc).splitlines()[0][:200]})"
                        ) from None
                    with dst:
                        copy_metadata(src, dst, info.bands, info.alpha, provenance)
                        tiles_skipped = _execute(
                            plan, info, step, dst, cache, options, batch, progress, cancel, t0
                        )
            temp.finish(
                options.overviews,
                options.cog,
                options.compress,
                options.block_size,
                bigtiff,
                (plan.out_width, plan.out_height, count, info.dtype),
            )
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
    elapsed = time.monotonic() - t0
    if progress:
        progress(Progress(1.0, len(plan), len(plan), elapsed, 0.0, "done"))
    return UpscaleReport(
        input=str(src_path),
        output=str(dst_path),
        input_size=(info.width, info.height),
        output_size=(plan.out_width, plan.out_height),
        scale=scale,
        bands=info.bands,
        dtype=info.dtype,
        crs=crs_wkt,
        georeferenced=info.georeferenced,
        model=model_name,
        device=resolver.description,
        tiles=len(plan),
        tiles_skipped=tiles_skipped,
        tile_size=plan.tile,
        overlap=plan.overlap,
        elapsed_s=elapsed,
        radiometry=radiometry.describe(),
    )


def _sample_order(n: int, k: int) -> Iterator[int]:
    """Evenly spread window indexes first, then the rest (for mostly-nodata rasters)."""
    first = sorted({round(i) for i in np.linspace(0, n - 1, min(k, n))})
    yield from first
    chosen = set(first)
    yield from (i for i in range(n) if i not in chosen)


def _estimate_stats(
    plan: TilePlan,
    info: SourceInfo,
    step: ModelStep,
    options: UpscaleOptions,
    batch_size: int,
    cancel: CancelFn | None,
) -> dict[int, torch.Tensor]:
    """Run the model on a few valid windows; keep their raw outputs for the main pass.

    Weights that ship without colour match (``color_match: false``) need no statistics.
    """
    samples, cache = [], {}
    if not step.color_match:
        return cache
    with TileReader(info, step.radiometry) as reader:
        batch: list[TileInput] = []
        for idx in _sample_order(len(plan), max(1, options.stat_windows)):
            if len(samples) + len(batch) >= options.stat_windows:
                break
            tile = reader.read_tile(plan.window(idx))
            if tile.lr is not None:
                batch.append(tile)
            if len(batch) == batch_size:
                _check_cancel(cancel)
                samples += _run_samples(step, batch, cache)
                batch = []
        if batch:
            _check_cancel(cancel)
            samples += _run_samples(step, batch, cache)
    if not samples:
        raise EngineError(f"{info.path.name} has no valid pixel in the selected bands (all nodata)", "input")
    step.estimate_stats(samples)
    return cache


def _run_samples(step: ModelStep, batch: list[TileInput], cache: dict[int, torch.Tensor]) -> list[Any]:
    lr = np.stack([t.lr for t in batch if t.lr is not None])
    sr, up = step.raw(lr)
    out = []
    for i, t in enumerate(batch):
        cache[t.window.index] = sr[i].clone()
        out.append((t.lr, t.valid, sr[i], up[i]))
    return out


def _check_cancel(cancel: CancelFn | None) -> None:
    if cancel is not None and cancel():
        raise EngineCancelled("cancelled; nothing was written")


class _Worker(threading.Thread):
    """A daemon thread that records its exception instead of dying silently."""

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:
            self.error = exc


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _execute(
    plan: TilePlan,
    info: SourceInfo,
    step: ModelStep,
    dst: Any,
    cache: dict[int, torch.Tensor],
    options: UpscaleOptions,
    batch_size: int,
    progress: ProgressFn | None,
    cancel: CancelFn | None,
    t0: float,
) -> int:
    """Main pass: reader thread -> model (this thread) -> writer thread. Returns skipped tiles."""
    stop = threading.Event()
    inbox: queue.Queue = queue.Queue(maxsize=max(1, options.prefetch_batches))
    outbox: queue.Queue = queue.Queue(maxsize=2 * batch_size)
    windows = plan.windows()
    radiometry = step.radiometry
    n_out = len(info.bands)

    def read_loop() -> None:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), TileReader(info, radiometry) as reader:
            for i in range(0, len(windows), batch_size):
                batch = [
                    TileInput(w, None, np.ones((1, 1), bool)) if w.index in cache else reader.read_tile(w)
                    for w in windows[i : i + batch_size]
                ]
                if not _put(inbox, batch, stop):
                    return
        _put(inbox, _DONE, stop)

    def write_loop() -> None:
        blender = Blender(plan, n_out)
        env = rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_TIFF_INTERNAL_MASK=True)
        with env, TileReader(info) as masks:
            while True:
                try:
                    item = outbox.get(timeout=0.1)
                except queue.Empty:
                    if stop.is_set():
                        return
                    continue
                if item is _DONE:
                    return
                window, values = item
                for block, blended in blender.add(window, values):
                    done = finish_block(plan, info, radiometry, masks, block, blended)
                    with GdalErrors.watch("writing the output"):
                        write_block(dst, block, done.values, done.alpha, done.mask)

    reader_t, writer_t = _Worker("slimdiffsr-reader", read_loop), _Worker("slimdiffsr-writer", write_loop)
    reader_t.start()
    writer_t.start()
    done = skipped = 0
    try:
        while True:
            for t in (reader_t, writer_t):
                if t.error is not None:
                    raise t.error
            try:
                batch = inbox.get(timeout=0.1)
            except queue.Empty:
                if not reader_t.is_alive() and reader_t.error is None and inbox.empty():
                    raise EngineError("the reader stopped unexpectedly") from None
                continue
            if batch is _DONE:
                break
            _check_cancel(cancel)
            results = _run_batch(step, batch, cache)
            for window, values in results:
                skipped += values is None
                if not _put(outbox, (window, values), stop) or writer_t.error is not None:
                    raise writer_t.error or EngineError("the writer stopped unexpectedly")
            done += len(batch)
            if progress:
                elapsed = time.monotonic() - t0
                eta = elapsed / done * (len(windows) - done) if done else None
                progress(Progress(done / len(windows) * 0.99, done, len(windows), elapsed, eta))
        _put(outbox, _DONE, stop)
        while writer_t.is_alive():
            writer_t.join(timeout=0.1)
        if writer_t.error is not None:
            raise writer_t.error
        return skipped
    finally:
        stop.set()
        for t in (reader_t, writer_t):
            t.join(timeout=30)


def _run_batch(
    step: ModelStep, batch: list[TileInput], cache: dict[int, torch.Tensor]
) -> list[tuple[Window, np.ndarray | None]]:
    todo = [t for t in batch if t.lr is not None]
    raw: dict[int, torch.Tensor] = {}
    if todo:
        sr, _ = step.raw(np.stack([t.lr for t in todo if t.lr is not None]))
        raw = {t.window.index: sr[i] for i, t in enumerate(todo)}
    out: list[tuple[Window, np.ndarray | None]] = []
    for t in batch:
        r = cache.pop(t.window.index, None)
        if r is None:
            r = raw.get(t.window.index)
        out.append((t.window, None if r is None else step.finish(r)))
    return out
