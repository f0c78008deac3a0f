"""Many rasters: ``slimdiffsr upscale-batch`` locally or one file per task on a Dask cluster.

Inputs come from a folder (its rasters), a glob pattern, or a text file listing one path
per line. Each output is ``<output folder>/<pattern>`` (default ``{stem}_x{scale}.tif``).
A file that fails is reported with its one-line error and the others still run; an output
that is already complete (it exists, passes the writer's checks and records this input as
its source: outputs only ever appear by rename once finished) is skipped, so a re-run
after an interruption does only what is left.
"""

from __future__ import annotations

import contextlib
import glob
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from backend.engine.options import EngineCancelled, EngineError, UpscaleOptions
from backend.errors import SlimDiffSRError, one_line

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".img", ".vrt", ".png", ".jpg", ".jpeg")
DEFAULT_PATTERN = "{stem}_x{scale}.tif"


@dataclass
class BatchReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """Input path -> its one-line error."""
    elapsed_s: float = 0.0


def list_inputs(source: str) -> list[Path]:
    """A folder's rasters, a glob's matches, or the paths listed in a text file (one per
    line; blank lines and lines starting with # ignored; relative to the file's folder)."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)
    elif path.is_file() and path.suffix.lower() not in RASTER_SUFFIXES:
        files = []
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line).expanduser()
                files.append(p if p.is_absolute() else path.parent / p)
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        raise EngineError(
            f"no input rasters found in {source}; give a folder of rasters, a glob such as "
            "'scenes/*.tif' (quoted), or a text file with one path per line"
        )
    return files


def output_path(input: Path, folder: Path, pattern: str, scale: int) -> Path:
    try:
        name = pattern.format(stem=input.stem, name=input.name, scale=scale)
    except (KeyError, IndexError, ValueError) as exc:
        raise EngineError(
            f"output pattern {pattern!r} is invalid ({exc}); use {{stem}}, {{name}} and "
            "{scale}, e.g. {stem}_x{scale}.tif"
        ) from None
    return folder / name


def is_complete(output: Path, input: Path) -> bool:
    """Whether ``output`` is a finished result of ``input`` (safe to skip)."""
    if not output.is_file():
        return False
    import rasterio

    from backend.engine.writer import verify_tiff

    try:
        with rasterio.open(output) as ds:
            expect = (ds.width, ds.height, ds.count, ds.dtypes[0])
            block = ds.block_shapes[0][0]
            if ds.tags().get("SLIMDIFFSR_SOURCE") != input.name:
                return False
        verify_tiff(output, expect, block)
    except Exception:
        return False
    return True


def run_batch(
    inputs: list[Path],
    folder: Path,
    options: UpscaleOptions,
    pattern: str = DEFAULT_PATTERN,
    progress: Callable[[int, int, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
) -> BatchReport:
    """Upscale every input into ``folder``; on ``options.scheduler`` one file per task."""
    t0 = time.monotonic()
    if not folder.is_dir():
        raise EngineError(f"output folder does not exist: {folder}; create it first")
    batch = _Batch(inputs, folder, options, pattern, BatchReport(), progress, cancel, log)
    if options.scheduler:
        batch.run_on_cluster()
    else:
        batch.run_here()
    report = batch.report
    report.elapsed_s = time.monotonic() - t0
    return report


@dataclass
class _Batch:
    """One batch: its files, where they go, how, and what became of each."""

    inputs: list[Path]
    folder: Path
    options: UpscaleOptions
    pattern: str
    report: BatchReport
    progress: Callable[[int, int, str], None] | None
    cancel: Callable[[], bool] | None
    log: Callable[[str], None] | None

    def todo(self, scale: int) -> list[tuple[Path, Path]]:
        """(input, output) of the files still to do; complete outputs are reported skipped."""
        todo = []
        for src in self.inputs:
            dst = output_path(src, self.folder, self.pattern, scale)
            if is_complete(dst, src):
                self.report.skipped.append(str(src))
            else:
                todo.append((src, dst))
        return todo

    def record(self, src: Path, run: Callable[[], object]) -> None:
        """Run one file and file its outcome: done, or failed with its one-line error (an
        unexpected error too, so that the other files still finish); a cancel stops the batch."""
        try:
            run()
            self.report.done.append(str(src))
        except EngineCancelled:
            raise
        except SlimDiffSRError as exc:
            self.report.failed[str(src)] = str(exc)
        except Exception as exc:
            self.report.failed[str(src)] = f"unexpected {type(exc).__name__}: {one_line(exc)}"

    def run_here(self) -> None:
        """Every file in this process, with one model loaded once."""
        from backend.engine.model import resolve_model
        from backend.engine.run import upscale_raster

        resolver = resolve_model(None, self.options)  # loaded once for every file
        todo = self.todo(resolver.scale)
        if self.log:
            self.log(
                f"{len(todo)} file(s) to do, {len(self.report.skipped)} already complete; "
                f"device {resolver.description}"
            )
        local = replace(self.options, scheduler=None)
        for i, (src, dst) in enumerate(todo):
            self.record(src, partial(upscale_raster, src, dst, resolver, local, cancel=self.cancel))
            if self.progress:
                self.progress(i + 1, len(todo), src.name)

    def run_on_cluster(self) -> None:
        """One file per task on the cluster; each worker uses the model it loaded once."""
        from uuid import uuid4

        from distributed import Event, wait

        from backend.engine.cluster import model_spec, open_cluster, probe_workers
        from backend.engine.cluster_tasks import upscale_file

        with open_cluster(str(self.options.scheduler)) as cluster:
            spec = model_spec(None, self.options)
            workers = probe_workers(cluster, spec)
            scale = next(iter(workers.values()))["scale"]
            todo = self.todo(scale)
            if self.log:
                self.log(cluster.describe())
                self.log(f"{len(todo)} file(s) to do, {len(self.report.skipped)} already complete")
            client = cluster.client
            resources = dict(self.options.task_resources) or None
            stop = Event(f"slimdiffsr-cancel-{uuid4().hex}", client=client)
            pending = {
                client.submit(
                    upscale_file,
                    spec,
                    str(src.resolve()),
                    str(dst.resolve()),
                    self.options,
                    stop.name,
                    pure=False,
                    resources=resources,
                    priority=-i,
                ): src
                for i, (src, dst) in enumerate(todo)
            }
            finished = 0
            try:
                while pending:
                    if self.cancel is not None and self.cancel():
                        raise EngineCancelled("cancelled; finished files are kept, no partial file is left")
                    try:
                        done, _ = wait(list(pending), timeout=0.2, return_when="FIRST_COMPLETED")
                    except TimeoutError:
                        continue
                    for fut in done:
                        src = pending.pop(fut)
                        self.record(src, fut.result)
                        finished += 1
                        if self.progress:
                            self.progress(finished, len(todo), src.name)
            except BaseException:
                # Running files stop at their next batch and remove their temporary output;
                # queued ones return at once. Waiting for them means nothing is left behind.
                stop.set()
                with contextlib.suppress(Exception):
                    wait(list(pending), timeout=120)
                client.cancel(list(pending), force=True)
                raise
