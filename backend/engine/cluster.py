"""``upscale_raster`` on a Dask cluster: one raster cut into regions, one writer.

The client (this process) checks the input and the output exactly as the local engine
does, measures the global radiometry, asks one worker for the raster's statistics (the
network's global ones and the colour match's, shared by every region as the local engine
shares them by every tile), then submits one task per region of the plan
(:mod:`backend.engine.regions`) and one per seam.
Workers read their windows from the shared input, run the model they loaded once, blend
and finish the blocks; the client receives finished blocks (in the output's data type)
and writes them into the temporary GeoTIFF, which is renamed when complete, as locally.

Why one writer on the client rather than per-region files assembled by GDAL: a GeoTIFF
can only be written by one process, so assembled parts cost a second full pass (read,
decode, compress again) after the cluster is done; the single writer compresses each
block once, while the cluster computes (docs/cluster.md has the measurement).

Memory: the client holds at most ``in_flight`` region results and no accumulators (seam
blocks are blended by seam tasks on the workers), so its memory does not grow with the
raster. A worker that dies loses its tasks and the results it held; the scheduler runs
them again elsewhere, and as each block is written exactly once, from whichever copy
arrives first, nothing is lost or written twice.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from backend.engine.cluster_tasks import (
    ModelSpec,
    RasterStatistics,
    RegionJob,
    finish_seam,
    model_info,
    pick,
    raster_statistics,
    run_region,
)
from backend.engine.job import Job, ModelFacts, gdal_env
from backend.engine.options import EngineCancelled, EngineError, Progress, UpscaleOptions, UpscaleReport
from backend.engine.regions import Region, Seam, default_region_tiles, split_plan
from backend.engine.writer import (
    GdalErrors,
    TempOutput,
    write_block,
)

CONNECT_TIMEOUT_S = 10.0
"""How long to try reaching a scheduler before giving up (the whole error comes well
within 30 s)."""
WORKERS_TIMEOUT_S = 60.0
"""How long to wait for a reachable scheduler to have at least one worker."""
SCHEDULER_ENV = "SLIMDIFFSR_SCHEDULER"

LogFn = Callable[[str], None]


@dataclass
class Cluster:
    """A connected client, the local cluster it started (if any) and what its workers said."""

    client: Any
    address: str
    local: Any = None
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def dashboard(self) -> str:
        """The scheduler's dashboard address, or why there is none."""
        try:
            info = self.client.scheduler_info()
            port = info.get("services", {}).get("dashboard")
        except Exception:
            port = None
        if not port:
            return "none (install bokeh where the scheduler runs to get one)"
        host = self.address.split("://")[-1].rsplit(":", 1)[0] or "127.0.0.1"
        return f"http://{host}:{port}/status"

    def summary(self) -> str:
        """'cluster ADDRESS: N worker(s) (2 x cpu, fp32)'."""
        devices: dict[str, int] = {}
        for w in self.workers.values():
            devices[w["device"]] = devices.get(w["device"], 0) + 1
        text = ", ".join(f"{n} x {d}" for d, n in devices.items())
        return f"cluster {self.address}: {len(self.workers)} worker(s) ({text})"

    def describe(self) -> str:
        return f"{self.summary()}; dashboard {self.dashboard}"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close(timeout=10)
        if self.local is not None:
            with contextlib.suppress(Exception):
                self.local.close(timeout=10)


def _quiet_logs() -> None:
    """Dask logs every lost connection and restarted task at WARNING; the user gets our
    one-line summary instead (the logs stay available at DEBUG through logging config)."""
    for name in (
        "distributed",
        "distributed.client",
        "distributed.core",
        "distributed.comm",
        "distributed.batched",
        "distributed.worker",
        "distributed.scheduler",
        "distributed.nanny",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)


def connect(address: str, timeout: float = CONNECT_TIMEOUT_S) -> Cluster:
    """A client for ``tcp://HOST:PORT`` (or any Dask address), or ``local:N``: a local
    cluster of N single-threaded worker processes on 127.0.0.1.

    Raises a one-line EngineError (exit 2) when the scheduler cannot be reached in
    ``timeout`` seconds or has no worker."""
    from distributed import Client, LocalCluster

    _quiet_logs()
    address = address.strip()
    local = None
    if address.startswith("local"):
        try:
            n = int(address.partition(":")[2] or 2)
            if n < 1:
                raise ValueError
        except ValueError:
            raise EngineError(
                f"scheduler {address!r}: write local:N with N the number of worker processes, e.g. local:2"
            ) from None
        local = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
        )
        client = Client(local, timeout=timeout)
        shown = f"local:{n} ({local.scheduler_address})"
    else:
        if "://" not in address:
            address = f"tcp://{address}"
        try:
            client = Client(address, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise EngineError(
                f"cannot reach the Dask scheduler at {address} within {timeout:.0f} s "
                f"({type(exc).__name__}); start it (dask scheduler) or check the address "
                f"and the firewall, or run locally without --scheduler"
            ) from None
        shown = address
    try:
        client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
    except (OSError, TimeoutError):
        client.close()
        if local is not None:
            local.close()
        raise EngineError(
            f"the Dask scheduler at {shown} has no worker after {WORKERS_TIMEOUT_S:.0f} s; "
            "start workers (dask worker ADDRESS) or run locally without --scheduler"
        ) from None
    return Cluster(client, shown, local)


@contextlib.contextmanager
def open_cluster(address: str) -> Iterator[Cluster]:
    cluster = connect(address)
    try:
        yield cluster
    finally:
        cluster.close()


def probe_workers(cluster: Cluster, spec: ModelSpec) -> dict[str, dict[str, Any]]:
    """Load the model once on every worker (it stays loaded for the tasks that follow) and
    collect what each reports: host, device, model."""
    client = cluster.client
    addresses = list(client.scheduler_info()["workers"])
    futures = {
        a: client.submit(model_info, spec, workers=[a], allow_other_workers=False, pure=False)
        for a in addresses
    }
    try:
        cluster.workers = {a: f.result() for a, f in futures.items()}
    except EngineError as exc:
        raise EngineError(f"on the cluster's workers: {exc}") from None
    return cluster.workers


def model_spec(model: Any, options: UpscaleOptions) -> ModelSpec:
    """What every worker loads. Workers load from a path they can see (shared storage);
    an already loaded model of this process is named by ``options.weights``."""
    from pathlib import PurePath

    weights: str | PurePath | None = options.weights
    if isinstance(model, str | PurePath):
        weights = model
    elif model is not None and getattr(model, "path", None) is not None:
        weights = model.path
    return ModelSpec(
        None if weights is None else str(Path(weights).resolve()),
        options.scale,
        options.device,
        options.precision,
    )


def _check_cancel(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise EngineCancelled("cancelled; nothing was written")


def upscale_raster_on_cluster(
    input: str | Path,
    output: str | Path,
    model: Any = None,
    options: UpscaleOptions | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    log: LogFn | None = None,
    cluster: Cluster | None = None,
) -> UpscaleReport:
    """``upscale_raster`` with its windows computed on ``options.scheduler`` (or on an
    already connected ``cluster``): same checks, same plan, same file."""
    options = options or UpscaleOptions()
    with gdal_env(), contextlib.ExitStack() as stack:
        job = Job.open(input, output, options)
        if cluster is None:
            cluster = stack.enter_context(open_cluster(str(options.scheduler)))
        spec = model_spec(model, options)
        workers = cluster.workers or probe_workers(cluster, spec)
        if log:
            log(cluster.describe())
        return _run(cluster, spec, workers, job, progress, cancel)


def _model_facts(cluster: Cluster, worker: dict[str, Any]) -> ModelFacts:
    """The model as the first worker reported it: every worker runs the same plan, so GPU
    workers get the GPU's tiles and batches, as the local engine follows its own device."""
    return ModelFacts(
        worker["model"],
        worker["scale"],
        worker["vae_channels"],
        worker["multiple"],
        worker["margin"],
        worker["device_type"],
        f"Dask {cluster.summary()}",
        worker["device"].rpartition(", ")[2],
    )


def _run(
    cluster: Cluster,
    spec: ModelSpec,
    workers: dict[str, dict[str, Any]],
    job: Job,
    progress: Callable[[Progress], None] | None,
    cancel: Callable[[], bool] | None,
) -> UpscaleReport:
    first = next(iter(workers.values()))
    facts = _model_facts(cluster, first)
    plan = job.plan_for(facts)
    client = cluster.client
    resources = dict(job.options.task_resources) or None
    futures: set[Any] = set()
    temp = TempOutput(job.dst)
    with job.failures(temp):
        try:
            stats = _raster_statistics(client, spec, job, resources, futures, cancel)
            if stats.regime:
                from backend.regimes import describe_mixture

                facts = replace(facts, name=f"{facts.name}, {describe_mixture(stats.regime)}")
            tasks = RegionTasks(client, spec, job, stats, resources, futures)
            skipped, crs_wkt = job.write(
                temp, facts, lambda dst: tasks.compute_and_write(dst, progress, cancel)
            )
        except BaseException:
            _cancel(client, futures)
            raise
    if progress:
        progress(Progress(1.0, len(plan), len(plan), job.elapsed, 0.0, "done"))
    return job.report(
        facts,
        skipped,
        crs_wkt,
        cluster.summary(),
        [f"{a} ({w['device']})" for a, w in cluster.workers.items()],
    )


def _raster_statistics(
    client: Any,
    spec: ModelSpec,
    job: Job,
    resources: dict[str, float] | None,
    futures: set[Any],
    cancel: Callable[[], bool] | None,
) -> RasterStatistics:
    """The raster's network and colour-match statistics, from one task (one pass over the
    raster or its reduced copy, as the local engine gathers them); shared by every region."""
    future = client.submit(
        raster_statistics, spec, job.plan, job.info, job.radiometry, pure=False, resources=resources
    )
    futures.add(future)
    while not future.done():
        _check_cancel(cancel)
        time.sleep(0.05)
    stats: RasterStatistics = future.result()
    futures.discard(future)
    return stats


def _cancel(client: Any, futures: set[Any]) -> None:
    """Stop the cluster's work for this run (queued and running tasks, held results)."""
    with contextlib.suppress(Exception):
        client.cancel(list(futures), force=True)


@dataclass
class RegionTasks:
    """The regions and seams of one job on the cluster, and the writer of what comes back.

    ``futures`` holds the futures this client still needs (for cancelling them): a region's
    own future is dropped once its parts are picked, a part once its seam is submitted, so
    the cluster frees each result as soon as nothing needs it."""

    client: Any
    spec: ModelSpec
    job: Job
    stats: RasterStatistics
    resources: dict[str, float] | None
    futures: set[Any]
    pending: dict[Any, str] = field(default_factory=dict)
    """Futures whose results the writer waits for: 'region' or 'seam'."""
    _seams: list[Seam] = field(default_factory=list)
    _parts: dict[int, dict[int, Any]] = field(default_factory=dict)
    """Per seam: the pieces its regions computed so far, by region index."""

    def compute_and_write(
        self, dst: Any, progress: Callable[[Progress], None] | None, cancel: Callable[[], bool] | None
    ) -> int:
        """Submit regions (a bounded number ahead of the writer) and seams; write what comes
        back into ``dst``. Returns the number of skipped (all-nodata) tiles."""
        from distributed import wait

        client, job, futures = self.client, self.job, self.futures
        plan = job.plan
        regions, seams = split_plan(plan, job.options.region_tiles or default_region_tiles(plan))
        self._seams = seams
        self._parts = {s.index: {} for s in seams}
        n_workers = max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
        in_flight = 2 * n_workers + 2
        next_region = 0
        written = tiles_done = skipped = 0
        total_blocks = plan.block_grid[0] * plan.block_grid[1]
        while written < total_blocks:
            _check_cancel(cancel)
            regions_waiting = sum(1 for kind in self.pending.values() if kind == "region")
            while next_region < len(regions) and regions_waiting < in_flight:
                self._submit_region(regions[next_region])
                next_region += 1
                regions_waiting += 1
            if not self.pending:
                raise EngineError("the cluster run ended with blocks not written (a bug; please report it)")
            try:
                done, _ = wait(list(self.pending), timeout=0.2, return_when="FIRST_COMPLETED")
            except TimeoutError:
                continue
            for fut in done:
                kind = self.pending.pop(fut)
                result = fut.result()  # re-raises the task's error here
                blocks = result["finished"] if kind == "region" else result
                for b in blocks:
                    with GdalErrors.watch("writing the output"):
                        write_block(dst, plan.block_at(b.row, b.col), b.values, b.alpha, b.mask)
                written += len(blocks)
                futures.discard(fut)
                if kind == "region":
                    tiles_done += result["tiles"]
                    skipped += result["skipped"]
                    if progress:
                        elapsed = job.elapsed
                        eta = elapsed / tiles_done * (len(plan) - tiles_done) if tiles_done else None
                        progress(Progress(tiles_done / len(plan) * 0.99, tiles_done, len(plan), elapsed, eta))
                fut.release()
        return skipped

    def _submit_region(self, r: Region) -> None:
        client, job, futures = self.client, self.job, self.futures
        job_seams = {s: self._seams[s].blocks for s in r.seams}
        region_job = RegionJob(
            self.spec, job.plan, job.info, job.radiometry, self.stats, job.batch, r, job_seams
        )
        fut = client.submit(run_region, region_job, pure=False, priority=-r.index, resources=self.resources)
        done = client.submit(pick, fut, "finished", pure=False, priority=-r.index)
        futures.add(done)
        self.pending[done] = "region"
        for s in r.seams:
            part = client.submit(pick, fut, s, pure=False, priority=-r.index)
            futures.add(part)
            self._parts[s][r.index] = part
            seam = self._seams[s]
            if len(self._parts[s]) == len(seam.regions):
                ordered = [self._parts[s][i] for i in seam.regions]
                sf = client.submit(
                    finish_seam, job.plan, job.info, job.radiometry, seam, *ordered, pure=False, priority=1
                )
                futures.add(sf)
                futures.difference_update(ordered)
                self.pending[sf] = "seam"
                del self._parts[s]
