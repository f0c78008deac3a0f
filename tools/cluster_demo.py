"""``make cluster-demo``: the demo scene through a real Dask scheduler and two workers.

Starts ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (this machine's
loopback only), runs ``slimdiffsr upscale --scheduler`` on a window of the demo's Landsat 8
scene with the bundled model, runs the same locally, shows the two outputs are equal, and
stops the processes it started. DEMO_SIZE (default 512) sets the window's side; the cluster
run cuts it into one region per tile (``--region-tiles 1``), so that regions, seams and
both workers all take part.
"""

from __future__ import annotations

import json
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

from tools.demo import BANDS, BUILD, NODATA, crop  # noqa: E402
from tools.demo_data import DEFAULT_MEMBER, download, extract  # noqa: E402

BIN = Path(sys.executable).parent


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)


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
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="slimdiffsr-cluster-demo-") as tmp:
        folder = Path(tmp)
        file = folder / "scheduler.json"
        try:
            procs.append(
                start(
                    [
                        str(BIN / "dask"),
                        "scheduler",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        "0",
                        "--dashboard-address",
                        "127.0.0.1:0",
                        "--scheduler-file",
                        str(file),
                    ],
                    env,
                    folder / "scheduler.log",
                )
            )
            deadline = time.monotonic() + 60
            while not file.exists():
                if time.monotonic() > deadline or procs[0].poll() is not None:
                    print(
                        "error: the dask scheduler did not start; see " + str(folder / "scheduler.log"),
                        file=sys.stderr,
                    )
                    return 1
                time.sleep(0.2)
            address = json.loads(file.read_text())["address"]
            print(f"scheduler: {address}")
            for i in range(2):
                procs.append(
                    start(
                        [
                            str(BIN / "dask"),
                            "worker",
                            address,
                            "--nthreads",
                            "1",
                            "--host",
                            "127.0.0.1",
                            "--dashboard-address",
                            "127.0.0.1:0",
                        ],
                        env,
                        folder / f"worker{i}.log",
                    )
                )
            local_out, cluster_out = BUILD / "cluster_demo_local.tif", BUILD / "cluster_demo_cluster.tif"
            t_local = upscale(source, local_out, env)
            t_cluster = upscale(source, cluster_out, env, "--scheduler", address, "--region-tiles", "1")
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
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
