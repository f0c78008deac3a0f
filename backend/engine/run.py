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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.engine.blender import Blender
from backend.engine.finish import finish_block
from backend.engine.job import Job, ModelFacts, gdal_env
from backend.engine.options import EngineCancelled, EngineError, Progress, UpscaleOptions, UpscaleReport
from backend.engine.plan import TilePlan, Window
from backend.engine.reader import SourceInfo, TileInput, TileReader
from backend.engine.writer import (
    GdalErrors,
    TempOutput,
    write_block,
)

if TYPE_CHECKING:  # torch and the model load only once the input has passed its checks
    import torch

    from backend.engine.model import ModelLike, ModelStep
    from backend.inference import SuperResolver

_DONE = object()

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


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
    and devices); without, on this process's threads, and dask is never imported. ``log``
    also receives the expert mixture chosen for the raster (degradation-aware weights).
    """
    options = options or UpscaleOptions()
    if options.scheduler:
        from backend.engine.cluster import upscale_raster_on_cluster

        return upscale_raster_on_cluster(input, output, model, options, progress, cancel, log)
    with gdal_env():
        job = Job.open(input, output, options)
        # Imported only now: a bad path or input is refused in a fraction of a second instead
        # of after the seconds torch takes to load.
        from backend.engine.calibration import calibrate_on_raster
        from backend.engine.model import ModelStep, adapt_to_raster, gather_statistics, resolve_model

        resolver = resolve_model(model, options)
        plan = job.plan_for(_model_facts(resolver))
        resolver = adapt_to_raster(job.info, job.radiometry, resolver)  # degradation-aware weights
        if log and resolver.regime_description:
            log(f"degradation estimate: {resolver.regime_description}")
        step = ModelStep(resolver, job.radiometry)
        temp = TempOutput(job.dst)
        with job.failures(temp):
            # int8 on CPUs without bf16 (precision auto/int8): a calibrated copy then runs
            if calibrate_on_raster(plan, job.info, step):
                resolver = step.resolver
                if log:
                    log(f"device: {resolver.description} (calibrated on this raster)")
            cache = gather_statistics(plan, job.info, step)  # shared by every tile
            ran = _model_facts(resolver)  # after calibration: the precision it runs at
            skipped, crs_wkt = job.write(
                temp,
                ran,
                lambda dst: _execute(
                    plan, job.info, step, dst, cache, options, job.batch, progress, cancel, job.t0
                ),
            )
    if progress:
        progress(Progress(1.0, len(plan), len(plan), job.elapsed, 0.0, "done"))
    return job.report(ran, skipped, crs_wkt, resolver.description)


def _model_facts(resolver: SuperResolver) -> ModelFacts:
    return ModelFacts(
        resolver.title,
        resolver.scale,
        resolver.model.config.vae_channels,
        resolver.multiple,
        resolver.receptive_margin,
        resolver.device.type,
        resolver.description,
        resolver.precision,
        resolver.parallel_tiles,
    )


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
        with gdal_env(), TileReader(info, radiometry) as reader:
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
        with gdal_env(), TileReader(info) as masks:
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
