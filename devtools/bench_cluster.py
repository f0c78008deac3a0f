"""Cluster measurements: ``python -m devtools.bench_cluster`` (``make bench-cluster``).

* the same input (default 2048x2048, nano model, x4) locally and on ``local:2`` (two
  single-threaded worker processes on 127.0.0.1) in one run: times, their ratio, maximum
  pixel difference;
* per-task overhead: the round trip of no-op tasks through the scheduler, in ms;
* the client's peak RSS for two input sizes (0.25 and 4 Mpx; fresh client processes);
* writing: one writer against per-region parts assembled by GDAL (the extra pass).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from backend.engine.options import UpscaleOptions
from backend.engine.run import upscale_raster
from devtools.compact import CONFIGS, write_random_weights
from devtools.data import synthetic_raster


def task_overhead_ms(scheduler: str, n: int = 200) -> float:
    """Mean wall time per no-op task, submitted at once and gathered."""
    from backend.engine.cluster import open_cluster

    with open_cluster(scheduler) as cluster:
        client = cluster.client
        client.gather(client.map(_noop, range(20), pure=False))  # warm-up
        t0 = time.perf_counter()
        client.gather(client.map(_noop, range(n), pure=False))
        return (time.perf_counter() - t0) / n * 1000


def _noop(i: int) -> int:
    return i


def client_rss(size: int, weights: Path, folder: Path, scheduler: str) -> float:
    """Peak RSS (MB) of a fresh client process running ``size``^2 on the cluster (the
    first 100 rows hold data across the full width, the rest is nodata).

    Read from the kernel's high-water mark of the child's own address space (VmHWM):
    ``getrusage``'s ru_maxrss survives exec, so a child of a large parent reports the
    parent's peak instead of its own."""
    src = synthetic_raster(folder / f"rss_{size}.tif", size, valid_rows=100)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="nano")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rss-sizes", default="500,2000")
    p.add_argument("--write-size", type=int, default=4096)
    args = p.parse_args(argv)
    scheduler = f"local:{args.workers}"
    results: dict[str, object] = {"config": args.config, "size": args.size, "workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="slimdiffsr-bench-cluster-") as tmp:
        folder = Path(tmp)
        weights = write_random_weights(folder / f"{args.config}.safetensors", CONFIGS[args.config])
        src = synthetic_raster(folder / "in.tif", args.size)
        options = UpscaleOptions(weights=str(weights))
        t0 = time.perf_counter()
        local = upscale_raster(src, folder / "local.tif", None, options)
        results["local_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        remote = upscale_raster(
            src,
            folder / "cluster.tif",
            None,
            UpscaleOptions(weights=str(weights), scheduler=scheduler),
            log=lambda m: print(m, file=sys.stderr),
        )
        results["cluster_s"] = time.perf_counter() - t0
        results["ratio"] = results["cluster_s"] / results["local_s"]  # type: ignore[operator]
        results["tiles"] = local.tiles
        with rasterio.open(folder / "local.tif") as a, rasterio.open(folder / "cluster.tif") as b:
            results["max_abs_diff_dn"] = int(np.abs(a.read().astype(int) - b.read().astype(int)).max())
        results["cluster_device"] = remote.device
        print(json.dumps(results), file=sys.stderr)
        results["task_overhead_ms"] = task_overhead_ms(scheduler)
        for size in map(int, args.rss_sizes.split(",")):
            results[f"client_peak_rss_mb_{size}"] = client_rss(size, weights, folder, scheduler)
        results["writing"] = writer_comparison(folder, args.write_size)
    results["bench_process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
