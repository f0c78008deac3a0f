"""Engine measurements: ``python -m devtools.bench_engine`` (``make bench-engine``).

* throughput: end-to-end Mpx/s of ``upscale_raster`` on a 2048x2048 input against the
  model alone on the same tiles (same batches, same device), and their ratio;
* memory: peak RSS of a whole run, each in a fresh subprocess, for two raster sizes;
* ``--margin``: how far into a tile its output differs from the untiled output (the
  receptive margin that sets the default overlap);
* ``--seams``: the seam statistic of tiled against single-tile output.

``--margin`` and ``--seams`` run on a real scene of the shared data folder (``--shared``,
default $SLIMDIFFSR_SHARED). Models are random-weight members of the student family
(devtools.compact): the engine's costs do not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch

from backend.engine.job import default_batch, default_overlap, default_tile, max_tile_out
from backend.engine.options import UpscaleOptions
from backend.engine.plan import TilePlan, make_plan
from backend.engine.run import upscale_raster
from backend.inference import SuperResolver
from backend.model import SlimDiffSRStudent
from backend.weights import load_weights
from devtools.compact import CONFIGS, write_random_weights
from devtools.data import reference_image, synthetic_raster, write_raster
from devtools.margin import edge_profile, receptive_margin


# -- model-only timing -----------------------------------------------------------------------
def model_only_seconds(resolver: SuperResolver, plan: TilePlan, batch_size: int) -> float:
    """Time of the network alone on the plan's tiles (bicubic + network, same batches)."""
    n = len(plan)
    h, w = plan.rows.tile, plan.cols.tile
    x = torch.rand(batch_size, 3, h, w) * 2 - 1
    resolver.restore(resolver.upsample(x[:1]))  # warm-up (allocators, cudnn autotuning)
    t0 = time.perf_counter()
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        sr, _ = resolver.restore(resolver.upsample(x[:b]))
        sr.cpu()
    if resolver.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def throughput(
    config: str, size: int, scale: int, device: str, precision: str, batch: int | None, folder: Path
) -> dict[str, Any]:
    weights = write_random_weights(folder / f"{config}_x{scale}.safetensors", CONFIGS[config], scale)
    src = synthetic_raster(folder / f"in_{size}.tif", size)
    loaded = load_weights(weights)
    resolver = SuperResolver(loaded.model, scale, device, precision)
    batch = batch or default_batch(resolver.device.type)
    width = loaded.model.config.vae_channels
    tile = default_tile(scale, width, batch, max_side=max_tile_out(resolver.device.type))
    plan = make_plan(size, size, scale, tile, default_overlap(scale), resolver.multiple)
    out_px = (size * scale) ** 2
    t_model = model_only_seconds(resolver, plan, batch)
    t0 = time.perf_counter()
    upscale_raster(src, folder / "out.tif", resolver, UpscaleOptions(batch_size=batch))
    t_e2e = time.perf_counter() - t0
    os.unlink(folder / "out.tif")
    return {
        "config": config,
        "device": resolver.description,
        "input": f"{size}x{size}",
        "tiles": len(plan),
        "model_s": t_model,
        "e2e_s": t_e2e,
        "model_mpx_s": out_px / t_model / 1e6,
        "e2e_mpx_s": out_px / t_e2e / 1e6,
        "ratio": t_e2e / t_model,
    }


# -- peak RSS ------------------------------------------------------------------------------
def rss_child(size: int, config: str, valid_rows: int | None, folder: Path) -> dict[str, Any]:
    """Run once in this (fresh) process and report its peak RSS."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    weights = write_random_weights(folder / "w.safetensors", CONFIGS[config], 4)
    src = synthetic_raster(folder / f"in_{size}.tif", size, valid_rows)
    t0 = time.perf_counter()
    report = upscale_raster(src, folder / "out.tif", weights, UpscaleOptions(device="cpu", precision="fp32"))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "size": size,
        "peak_rss_mb": peak_mb,
        "seconds": time.perf_counter() - t0,
        "tiles": report.tiles,
        "skipped": report.tiles_skipped,
    }


def peak_rss(size: int, config: str = "nano", valid_rows: int | None = None) -> dict[str, Any]:
    """Peak RSS of a whole run in a fresh subprocess (so earlier allocations do not count)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "devtools.bench_engine",
            "--rss-child",
            str(size),
            "--config",
            config,
            "--folder",
            tmp,
        ]
        if valid_rows is not None:
            cmd += ["--valid-rows", str(valid_rows)]
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=root)
        return json.loads(out.stdout.strip().splitlines()[-1])


# -- receptive margin and seams --------------------------------------------------------------
def margin_report(
    config: str, shared: str | Path | None = None, scale: int = 4, size: int = 192, tile: int = 128
) -> dict[str, Any]:
    """|tile output - untiled output| against the distance (output px) from the tile's edge."""
    torch.manual_seed(0)
    resolver = SuperResolver(SlimDiffSRStudent(CONFIGS[config]), scale, "cpu", "fp32")
    profile = edge_profile(resolver, size, tile, shared)
    margin, floor = receptive_margin(profile)
    return {
        "config": config,
        "scale": scale,
        "floor": floor,
        "margin_out_px": margin,
        "at": {d: profile[d] for d in (0, 4, 8, 16, 24, 32, 48, 64, 96) if d < len(profile)},
    }


def seam_lines(plan: TilePlan) -> tuple[list[int], list[int]]:
    """Output rows and columns where neighbouring tiles meet (centres of the blend ramps)."""
    s = plan.scale
    ys = [s * (b + plan.rows.tile + a) // 2 for a, b in itertools.pairwise(plan.rows.starts)]
    xs = [s * (b + plan.cols.tile + a) // 2 for a, b in itertools.pairwise(plan.cols.starts)]
    return ys, xs


def seam_ratio(tiled: np.ndarray, reference: np.ndarray, plan: TilePlan) -> float:
    """Mean |step| across the plan's seam lines in ``tiled`` / the same in ``reference``.

    ``reference`` is the single-tile output of the same image, so the image's own edges
    cancel out: 1.0 means the tiling added no step at all where tiles meet. Arrays are
    [bands, H, W].
    """
    ys, xs = seam_lines(plan)
    if not ys and not xs:
        return 1.0

    def steps(img: np.ndarray) -> float:
        img = img.astype(np.float64)
        at = [np.abs(img[:, y, :] - img[:, y - 1, :]).mean() for y in ys]
        at += [np.abs(img[:, :, x] - img[:, :, x - 1]).mean() for x in xs]
        return float(np.mean(at))

    return steps(tiled) / max(steps(reference), 1e-12)


def seam_table(
    config: str,
    shared: str | Path | None = None,
    size: int = 192,
    tile: int = 64,
    overlaps: tuple[int, ...] = (0, 4, 8, 16, 32),
) -> list[dict[str, Any]]:
    """Tiled against single-tile output of a real image crop, for several overlaps (x4)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = write_random_weights(folder / "w.safetensors", CONFIGS[config], 4)
        loaded = load_weights(weights)
        resolver = SuperResolver(loaded.model, 4, "cpu", "fp32")
        lr = np.rint(reference_image(size, shared) * 255).astype(np.uint8)
        src = write_raster(folder / "in.tif", lr)

        def run(name: str, opts: UpscaleOptions) -> np.ndarray:
            upscale_raster(src, folder / name, resolver, opts)
            with rasterio.open(folder / name) as ds:
                return ds.read().astype(np.float64)

        one = run("one.tif", UpscaleOptions(tile_size=size))
        for ov in overlaps:
            many = run(f"t{ov}.tif", UpscaleOptions(tile_size=tile, overlap=ov))
            plan = make_plan(size, size, 4, tile, ov, resolver.multiple)
            mad = float(np.abs(many - one).mean())
            rows.append(
                {
                    "config": config,
                    "tile": tile,
                    "overlap": ov,
                    "mad": mad,
                    "seam_ratio": seam_ratio(many, one, plan),
                }
            )
    return rows


# -- the report --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="compact model config: nano, tiny or paper")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--rss-sizes", default="1000,4000")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="default: 4 on a GPU, 1 on the CPU")
    p.add_argument("--margin", action="store_true")
    p.add_argument("--seams", action="store_true")
    p.add_argument("--rss-child", type=int)
    p.add_argument(
        "--valid-rows",
        type=int,
        default=400,
        help="RSS runs: rows of data across the full width (the rest is nodata); 0: all",
    )
    p.add_argument("--folder")
    p.add_argument("--shared", help="shared data folder for --margin and --seams; default $SLIMDIFFSR_SHARED")
    args = p.parse_args(argv)
    if args.rss_child:
        result = rss_child(args.rss_child, args.config or "nano", args.valid_rows or None, Path(args.folder))
        print(json.dumps(result))
        return 0
    try:  # both measure on the shared folder's reference scene, read first
        if args.seams:
            for cfg in (args.config or "tiny").split(","):
                for row in seam_table(cfg, args.shared):
                    print(json.dumps(row), flush=True)
            return 0
        if args.margin:
            for cfg in (args.config or "tiny,paper").split(","):
                print(json.dumps(margin_report(cfg, args.shared)))
            return 0
    except FileNotFoundError as exc:
        p.error(str(exc))
    configs = (args.config or "nano").split(",")
    print(
        f"{'config':8} {'device':24} {'input':>10} {'tiles':>6} {'model Mpx/s':>12} {'e2e Mpx/s':>10} "
        f"{'e2e/model':>9}"
    )
    for cfg in configs:
        with tempfile.TemporaryDirectory() as tmp:
            r = throughput(cfg, args.size, 4, args.device, args.precision, args.batch_size, Path(tmp))
        print(
            f"{r['config']:8} {r['device']:24} {r['input']:>10} {r['tiles']:>6} {r['model_mpx_s']:>12.3f} "
            f"{r['e2e_mpx_s']:>10.3f} {r['ratio']:>9.2f}",
            flush=True,
        )
    rows = f"first {args.valid_rows} rows valid" if args.valid_rows else "all valid"
    print(f"\n{'input':>10} {'peak RSS MB':>12} {'seconds':>8}  (x4, nano model, CPU, {rows})")
    for size in (int(s) for s in args.rss_sizes.split(",") if s):
        r = peak_rss(size, "nano", args.valid_rows or None)
        print(f"{size:>5}x{size:<4} {r['peak_rss_mb']:>12.0f} {r['seconds']:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
