"""``make cluster-demo``: the demo scene through a real Dask scheduler and two workers.

Starts ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (this machine's
loopback only), runs ``slimdiffsr upscale --scheduler`` on a window of the demo's Landsat 8
scene with the bundled model, runs the same locally, shows the two outputs are equal, and
stops the processes it started. DEMO_SIZE (default 512) sets the window's side; the cluster
run cuts it into one region per tile (``--region-tiles 1``), so that regions, seams and
both workers all take part.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.local_dask import LocalDask, dask_env  # noqa: E402
from tools.demo import BANDS, BUILD, NODATA, crop  # noqa: E402
from tools.demo_data import DEFAULT_MEMBER, download, extract  # noqa: E402

BIN = Path(sys.executable).parent


def upscale(source: Path, output: Path, env: dict[str, str], *extra: str) -> float:
    t0 = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "backend.cli",
            "upscale",
            str(source),
            str(output),
            "--bands",
            BANDS,
            "--nodata",
            str(NODATA),
            *extra,
        ],
        check=True,
        env=env,
        cwd=ROOT,
    )
    return time.monotonic() - t0


def main() -> int:
    BUILD.mkdir(parents=True, exist_ok=True)
    scene = BUILD / DEFAULT_MEMBER
    if not scene.is_file():
        extract(download(BUILD), DEFAULT_MEMBER, BUILD)
    source = crop(scene, int(os.environ.get("DEMO_SIZE", "512")))
    env = dask_env()
    logs = BUILD / "cluster_demo_logs"
    logs.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slimdiffsr-cluster-demo-") as tmp:
        try:
            cluster = LocalDask(Path(tmp), workers=2, logs=logs, dashboard=True, nanny=True)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        with cluster:
            print(f"scheduler: {cluster.address} (process logs in {logs})")
            local_out, cluster_out = BUILD / "cluster_demo_local.tif", BUILD / "cluster_demo_cluster.tif"
            t_local = upscale(source, local_out, env)
            args = ("--scheduler", cluster.address, "--region-tiles", "1")
            t_cluster = upscale(source, cluster_out, env, *args)
    with rasterio.open(local_out) as a, rasterio.open(cluster_out) as b:
        same_grid = (a.width, a.height, a.transform, a.crs, a.dtypes, a.nodata, a.descriptions) == (
            b.width,
            b.height,
            b.transform,
            b.crs,
            b.dtypes,
            b.nodata,
            b.descriptions,
        )
        diff = int(np.abs(a.read().astype(np.int64) - b.read().astype(np.int64)).max())
        size = f"{a.width}x{a.height}"
    print(
        f"{source.name} -> {size}: local {t_local:.1f} s, cluster (2 workers) {t_cluster:.1f} s; "
        f"same size/transform/CRS/type/nodata/descriptions: {same_grid}; max |difference| {diff} DN"
    )
    return 0 if same_grid and diff <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
