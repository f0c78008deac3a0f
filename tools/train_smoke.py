"""The whole training chain on tiny configurations, on CPU, in a few minutes.

teacher (random tiny SD-shaped base, LoRA + uncertainty estimator) -> prune -> distill
(MMD + L1) -> upscale of a real raster with the distilled weights. Fails (exit 1) when a
stage fails, when the distillation loss does not fall, or when the output is not written.

    python tools/train_smoke.py --out build/smoke [--data DIR ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY_STUDENT = {
    "vae_channels": 16,
    "encoder_blocks": [1, 1, 1, 1],
    "decoder_blocks": [1, 1, 1, 1],
    "num_queries": 8,
    "squeeze_dim": 16,
}


def synthetic_rasters(folder: Path, count: int = 6) -> Path:
    """Smooth random RGB rasters, used when the project's shared imagery is absent."""
    import numpy as np
    import rasterio

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        data = (np.kron(rng.random((3, 24, 24)), np.ones((8, 8))) * 220 + 15).astype("uint8")
        with rasterio.open(
            folder / f"synthetic_{i}.tif", "w", driver="GTiff", width=192, height=192, count=3, dtype="uint8"
        ) as ds:
            ds.write(data)
    return folder


def losses(log: Path) -> list[float]:
    with log.open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def main() -> int:
    shared = Path(os.environ.get("SLIMDIFFSR_SHARED", ROOT.parent / "shared"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="build/smoke")
    p.add_argument("--data", nargs="*", default=None)
    p.add_argument("--distill-steps", type=int, default=30)
    args = p.parse_args()

    import torch

    from backend.cli import main as cli

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    out = Path(args.out).resolve()
    data = args.data or (
        [str(shared / "data" / "train" / "deepforest")]
        if (shared / "data" / "train" / "deepforest").is_dir()
        else [str(synthetic_rasters(out / "data"))]
    )
    common = [
        "--data",
        *data,
        "--crop",
        "32",
        "--batch-size",
        "2",
        "--warmup",
        "0",
        "--log-every",
        "1",
        "--degradation",
        "bicubic",
        "--restart",
        "--val-crops-per-file",
        "1",
    ]
    times: dict[str, float] = {}

    def stage(name: str, argv: list[str]) -> None:
        t0 = time.perf_counter()
        rc = cli(argv)
        times[name] = round(time.perf_counter() - t0, 1)
        if rc != 0:
            raise SystemExit(f"train-smoke: stage '{name}' failed with exit code {rc}")

    stage(
        "teacher",
        [
            "teacher",
            *common,
            "--base",
            str(out / "base"),
            "--write-tiny-base",
            "--out",
            str(out / "teacher"),
            "--steps",
            "4",
            "--lr",
            "1e-3",
            "--val-every",
            "4",
        ],
    )
    stage(
        "prune",
        [
            "prune",
            "--teacher",
            str(out / "teacher" / "teacher"),
            "--out",
            str(out / "pruned.safetensors"),
            "--student",
            json.dumps(TINY_STUDENT),
        ],
    )
    stage(
        "distill",
        [
            "distill",
            *common,
            "--teacher",
            str(out / "teacher" / "teacher"),
            "--init",
            str(out / "pruned.safetensors"),
            "--out",
            str(out / "distill"),
            "--steps",
            str(args.distill_steps),
            "--lr",
            "2e-3",
            "--mmd-samples",
            "256",
            "--val-every",
            str(args.distill_steps),
            "--name",
            "smoke_student_x4",
        ],
    )
    weights = out / "distill" / "smoke_student_x4.safetensors"
    raster = (
        next((Path(d) for d in data if Path(d).is_file()), None)
        or sorted(f for d in data for f in Path(d).glob("*.tif"))[0]
    )
    stage(
        "upscale",
        [
            "upscale",
            str(raster),
            str(out / "upscaled_x4.tif"),
            "--weights",
            str(weights),
            "--device",
            "cpu",
            "--quiet",
        ],
    )

    values = losses(out / "distill" / "train_log.csv")
    first, last = sum(values[:3]) / 3, sum(values[-3:]) / 3
    summary = {
        "stage_seconds": times,
        "total_seconds": round(sum(times.values()), 1),
        "distill_loss_first3": round(first, 4),
        "distill_loss_last3": round(last, 4),
        "weights": str(weights),
        "upscaled": str(out / "upscaled_x4.tif"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if not last < first:
        print("train-smoke: the distillation loss did not fall", file=sys.stderr)
        return 1
    if not (out / "upscaled_x4.tif").is_file():
        print("train-smoke: upscale wrote no output", file=sys.stderr)
        return 1
    print("train-smoke: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
