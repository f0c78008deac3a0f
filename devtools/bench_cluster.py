"""Cluster measurements: ``python -m devtools.bench_cluster`` (``make bench-cluster``).

* the same input (default 2048x2048, the bundled x4 model) locally and on ``local:2`` (two
  single-threaded worker processes on 127.0.0.1) in one run, alternated: times, their
  ratio, maximum pixel difference; the cluster's start-up (processes, imports, one model
  load per worker) separately, as a cluster is started once for many jobs;
* per-task overhead: the round trip of no-op tasks through the scheduler, in ms;
* the client's peak RSS for two input sizes (0.25 and 4 Mpx; fresh client processes);
* writing: one writer against per-region parts assembled by GDAL (the extra pass).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from backend.engine.cluster import Cluster, model_spec, open_cluster, probe_workers, upscale_raster_on_cluster
from backend.engine.options import UpscaleOptions, UpscaleReport
from backend.engine.run import upscale_raster
from backend.runtime.cpu import cpu_info
from backend.weights import default_weights_path
from devtools.compact import CONFIGS, write_random_weights
from devtools.data import synthetic_raster


def task_overhead_ms(cluster: Cluster, n: int = 200) -> float:
    """Mean wall time per no-op task, submitted at once and gathered."""
    client = cluster.client
    client.gather(client.map(_noop, range(20), pure=False))  # warm-up
    t0 = time.perf_counter()
    client.gather(client.map(_noop, range(n), pure=False))
    return (time.perf_counter() - t0) / n * 1000


def _noop(i: int) -> int:
    return i


def client_rss(size: int, weights: Path, folder: Path, scheduler: str) -> float:
    """Peak RSS (MB) of a fresh client process running ``size``^2 on the cluster (every
    pixel valid, so every block of the output passes through the client).

    Read from the kernel's high-water mark of the child's own address space (VmHWM):
    ``getrusage``'s ru_maxrss survives exec, so a child of a large parent reports the
    parent's peak instead of its own."""
    src = synthetic_raster(folder / f"rss_{size}.tif", size)
    code = (
        "from backend.engine import UpscaleOptions, upscale_raster; "
        f"upscale_raster({str(src)!r}, {str(folder / f'rss_{size}_x4.tif')!r}, None, "
        f"UpscaleOptions(weights={str(weights)!r}, scheduler={scheduler!r})); "
        "print(next(int(line.split()[1]) for line in open('/proc/self/status') "
        "if line.startswith('VmHWM:')) / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def writer_comparison(folder: Path, size: int, parts: int = 4) -> dict[str, float]:
    """Seconds to write a ``size``^2 3-band uint8 GeoTIFF block by block (one writer), against
    writing ``parts`` x ``parts`` region files and assembling them with GDAL (VRT -> GTiff)."""
    from rasterio.windows import Window

    from backend.engine.writer import DEFLATE_LEVEL

    rng = np.random.default_rng(0)
    block = 512
    tile = np.clip(rng.normal(128, 30, (3, block, block)), 0, 255).astype(np.uint8)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "zlevel": DEFLATE_LEVEL,
        "predictor": 2,
        "crs": "EPSG:32633",
        "transform": rasterio.Affine(1, 0, 0, 0, -1, 0),
    }
    t0 = time.perf_counter()
    with rasterio.open(folder / "one.tif", "w", **profile) as dst:
        for y in range(0, size, block):
            for x in range(0, size, block):
                dst.write(tile, window=Window(x, y, block, block))
    single = time.perf_counter() - t0
    side = size // parts
    t0 = time.perf_counter()
    names = []
    for i in range(parts):
        for j in range(parts):
            p = folder / f"part_{i}_{j}.tif"
            prof = profile | {
                "width": side,
                "height": side,
                "transform": rasterio.Affine(1, 0, j * side, 0, -1, -i * side),
            }
            with rasterio.open(p, "w", **prof) as dst:
                for y in range(0, side, block):
                    for x in range(0, side, block):
                        dst.write(tile, window=Window(x, y, block, block))
            names.append(str(p))
    parts_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(["gdalbuildvrt", "-q", str(folder / "parts.vrt"), *names], check=True)
    subprocess.run(
        [
            "gdal_translate",
            "-q",
            "-co",
            "TILED=YES",
            "-co",
            "COMPRESS=DEFLATE",
            "-co",
            "ZLEVEL=1",
            "-co",
            "PREDICTOR=2",
            "-co",
            "NUM_THREADS=ALL_CPUS",
            str(folder / "parts.vrt"),
            str(folder / "assembled.tif"),
        ],
        check=True,
    )
    assemble = time.perf_counter() - t0
    return {"single_writer_s": single, "parts_written_s": parts_s, "gdal_assembly_s": assemble}


def _timed_local(src: Path, dst: Path, options: UpscaleOptions) -> tuple[float, UpscaleReport]:
    t0 = time.perf_counter()
    report = upscale_raster(src, dst, None, options)
    return time.perf_counter() - t0, report


def _timed_cluster(
    src: Path, dst: Path, options: UpscaleOptions, cluster: Cluster
) -> tuple[float, UpscaleReport]:
    t0 = time.perf_counter()
    report = upscale_raster_on_cluster(src, dst, None, options, cluster=cluster)
    return time.perf_counter() - t0, report


def _max_diff(a: Path, b: Path) -> int:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        return int(np.abs(x.read().astype(int) - y.read().astype(int)).max())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--config",
        default="bundled",
        help="'bundled' (the shipped x4 weights: the real per-tile cost) or a random-weight "
        "preset of devtools.compact (nano: almost no compute, so the overhead stands out)",
    )
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="local/cluster pairs, alternated")
    p.add_argument("--rss-sizes", default="500,2000")
    p.add_argument("--write-size", type=int, default=4096)
    args = p.parse_args(argv)
    scheduler = f"local:{args.workers}"
    cpu = cpu_info()
    results: dict[str, Any] = {
        "cpu": cpu.describe(),
        "config": args.config,
        "size": args.size,
        "workers": args.workers,
    }
    with tempfile.TemporaryDirectory(prefix="slimdiffsr-bench-cluster-") as tmp:
        folder = Path(tmp)
        nano = write_random_weights(folder / "nano.safetensors", CONFIGS["nano"])
        if args.config == "bundled":
            weights = default_weights_path(4)
        else:
            weights = write_random_weights(folder / f"{args.config}.safetensors", CONFIGS[args.config])
        src = synthetic_raster(folder / "in.tif", args.size)
        options = UpscaleOptions(weights=str(weights))
        # A cluster is started once and serves many jobs: its start-up (processes, imports,
        # one model load per worker) is reported on its own, not charged to the job.
        t0 = time.perf_counter()
        with open_cluster(scheduler) as cluster:
            probe_workers(cluster, model_spec(None, options))
            results["cluster_start_s"] = time.perf_counter() - t0
            results["cluster"] = cluster.summary()
            local_s, cluster_s = [], []
            for _ in range(max(1, args.repeat)):
                t, local = _timed_local(src, folder / "local.tif", options)
                local_s.append(t)
                t, _remote = _timed_cluster(src, folder / "cluster.tif", options, cluster)
                cluster_s.append(t)
            results["local_s"] = float(np.median(local_s))
            results["cluster_s"] = float(np.median(cluster_s))
            results["ratio"] = results["cluster_s"] / results["local_s"]
            results["local_device"] = local.device
            results["tiles"] = local.tiles
            results["output_mpx"] = local.output_size[0] * local.output_size[1] / 1e6
            results["max_abs_diff_dn"] = _max_diff(folder / "local.tif", folder / "cluster.tif")
            print(json.dumps(results), file=sys.stderr)
            results["task_overhead_ms"] = task_overhead_ms(cluster)
        for size in map(int, args.rss_sizes.split(",")):
            results[f"client_peak_rss_mb_{size}"] = client_rss(size, nano, folder, scheduler)
        results["writing"] = writer_comparison(folder, args.write_size)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
