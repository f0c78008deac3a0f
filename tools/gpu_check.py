"""``make gpu-check``: is the CUDA path right, and how fast is it? One script, one GPU, < 10 min.

1. installs what the backend needs that the machine lacks (rasterio, affine, scipy: GPU
   hosts often have torch but no GDAL stack), from ``--wheelhouse`` first, then the index;
   when they still cannot be installed, the timings fall back to the network on the
   engine's tiles (no raster I/O) and say so;
2. correctness: the bundled default x4 model on real crops (``data/eval`` of ``--shared``,
   default $SLIMDIFFSR_SHARED, which the Makefile exports; else a synthetic image) on
   ``--device`` at fp32 (TF32 off), fp16 and bf16 against the CPU in fp32 (torch, the
   reference): max and 99.9th-percentile |difference| in 8-bit DN. A
   difference over its limit, or any non-finite value, is a mismatch: the script goes on
   with the timings and exits with status 1 at the end;
3. speed: ``upscale_raster`` (precision auto) on synthetic uint8 rasters whose outputs are
   4096x4096 and 20000x20000 pixels, at batch sizes 1, 4 and 8: seconds, output Mpx/s,
   peak GPU memory. Runs that would pass ``--budget-s`` are skipped, named as skipped.

    python tools/gpu_check.py [--device cuda] [--out-sizes 4096,20000] [--batches 1,4,8]
    python tools/gpu_check.py --device cpu --out-sizes 256 --batches 1,2   # dry run, no GPU

Exit status: 0 all checks passed, 1 a mismatch, 2 the device is unusable or a run failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ENGINE_PACKAGES = {
    "rasterio": "rasterio==1.4.3",
    "affine": "affine==2.4.0",
    "scipy": "scipy",
    "safetensors": "safetensors",
    "psutil": "psutil",
}
# |difference| limits in 8-bit DN against CPU fp32: (max, 99.9th percentile).
LIMITS = {"fp32": (2.0, 1.0), "fp16": (16.0, 2.0), "bf16": (32.0, 4.0)}


def say(text: str) -> None:
    print(text, flush=True)


def ensure_packages(wheelhouse: Path | None) -> list[str]:
    """Install the missing engine packages; returns those still missing."""
    missing = [m for m in ENGINE_PACKAGES if importlib.util.find_spec(m) is None]
    if not missing:
        return []
    specs = [ENGINE_PACKAGES[m] for m in missing]
    attempts = []
    if wheelhouse and wheelhouse.is_dir():
        attempts.append(["--no-index", "--find-links", str(wheelhouse)])
    attempts.append([])
    for extra in attempts:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *extra, *specs]
        say(f"installing {', '.join(specs)}{' from ' + str(wheelhouse) if extra else ''}")
        try:
            subprocess.run(cmd, check=True, timeout=240, capture_output=True, text=True)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            detail = getattr(exc, "stderr", "") or ""
            say(f"  pip failed: {(detail.strip().splitlines() or ['timeout'])[-1][:200]}")
            continue
        importlib.invalidate_caches()
        missing = [m for m in ENGINE_PACKAGES if importlib.util.find_spec(m) is None]
        if not missing:
            break
    return missing


def test_images(scale: int, shared: Path | None, count: int = 3, side: int = 256) -> list:
    """LR test images HxWx3 in [0, 1]: eval crops reduced x``scale`` from the shared data
    folder when there is one (and rasterio), else one synthetic image."""
    import numpy as np

    from devtools.data import shared_dir, synthetic_image

    folder = shared_dir(shared)
    images = []
    if folder and (folder / "data/eval").is_dir() and importlib.util.find_spec("rasterio") is not None:
        from devtools.bench import eval_pairs

        images = [lr for _, lr, _ in eval_pairs(folder / "data/eval", scale, side)[:count]]
    return images or [np.ascontiguousarray(synthetic_image(64).transpose(1, 2, 0))]


def check_correctness(
    loaded, device: str, precisions: list[str], shared: Path | None = None
) -> tuple[list[dict], bool]:
    """Max and 99.9 % |difference| in DN of each precision on ``device`` against CPU fp32."""
    import numpy as np
    import torch

    from backend.inference import SuperResolver

    images = test_images(loaded.scale, shared)
    reference = SuperResolver.from_weights(loaded, "cpu", "fp32", runtime="torch")
    refs = [np.round(reference.super_resolve(lr, pad_multiple=reference.multiple) * 255) for lr in images]
    rows, ok = [], True
    for precision in precisions:
        row = {"device": device, "precision": precision}
        try:
            if device.startswith("cuda"):
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False
            resolver = SuperResolver.from_weights(loaded, device, precision)
            if device == "cpu" and resolver.needs_calibration:
                resolver.calibrate(images)
            outs = [resolver.super_resolve(lr, pad_multiple=resolver.multiple) for lr in images]
        except Exception as exc:  # every failure is reported, then the next precision
            row.update(status="error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            rows.append(row)
            ok = False
            continue
        pairs = zip(outs, refs, strict=True)
        diff = np.concatenate([np.abs(np.round(o * 255) - r).ravel() for o, r in pairs])
        finite = all(np.isfinite(o).all() for o in outs)
        limit_max, limit_q = LIMITS.get(precision, LIMITS["bf16"])
        q = float(np.quantile(diff, 0.999))
        passed = finite and float(diff.max()) <= limit_max and q <= limit_q
        ok &= passed
        row.update(
            runs_as=resolver.description,
            max_dn=float(diff.max()),
            p999_dn=q,
            finite=finite,
            limits=f"max <= {limit_max:g}, 99.9% <= {limit_q:g}",
            status="ok" if passed else "MISMATCH",
        )
        rows.append(row)
    return rows, ok


def time_engine(weights: Path, device: str, out_size: int, batch: int, folder: Path) -> dict:
    """upscale_raster on a synthetic uint8 raster of out_size/scale input pixels."""
    import torch

    from backend.engine import UpscaleOptions, upscale_raster
    from devtools.data import synthetic_raster

    size = out_size // 4
    src = folder / f"in_{size}.tif"
    if not src.is_file():
        synthetic_raster(src, size)
    out = folder / "out.tif"
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    report = upscale_raster(src, out, weights, UpscaleOptions(device=device, batch_size=batch))
    seconds = time.perf_counter() - start
    out.unlink(missing_ok=True)
    return timing_row(
        "engine", device, out_size, batch, seconds, report.tiles, report.tile_size, report.device
    )


def time_tiles(loaded, device: str, out_size: int, batch: int) -> dict:
    """Without rasterio: the network on the tiles the engine would run (no I/O)."""
    import torch

    from backend.inference import SuperResolver

    resolver = SuperResolver.from_weights(loaded, device, "auto")
    tile = 512 // 4 if device.startswith("cuda") else 256 // 4
    n_side = -(-out_size // 4 // (tile - 16))
    n = n_side * n_side
    x = torch.rand(batch, 3, tile, tile) * 2 - 1
    resolver.restore(resolver.upsample(x[:1]))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(0, n, batch):
        resolver.restore(resolver.upsample(x[: min(batch, n - i)]))[0].cpu()
    seconds = time.perf_counter() - start
    return timing_row(
        "tiles only (no rasterio)", device, out_size, batch, seconds, n, tile, resolver.description
    )


def timing_row(
    mode: str, device: str, out_size: int, batch: int, seconds: float, tiles: int, tile: int, runs_as: str
) -> dict:
    """One timing's report line, with the peak GPU memory since the last reset (CUDA only)."""
    import torch

    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {
        "mode": mode,
        "out": f"{out_size}x{out_size}",
        "batch": batch,
        "seconds": round(seconds, 2),
        "mpx_s": round(out_size * out_size / seconds / 1e6, 3),
        "peak_gpu_mb": peak and round(peak),
        "tiles": tiles,
        "tile": tile,
        "runs_as": runs_as,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (a dry run without a GPU)")
    p.add_argument("--out-sizes", default="4096,20000", help="output sides of the timed rasters")
    p.add_argument("--batches", default="1,4,8")
    p.add_argument("--precisions", default=None, help="default: fp32,fp16,bf16 on CUDA; fp32,auto on the CPU")
    p.add_argument("--budget-s", type=float, default=540.0, help="skip timings that would end after this")
    p.add_argument("--wheelhouse", type=Path, default=None, help="wheels for offline installs")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--shared", type=Path, default=None, help="shared data folder; default $SLIMDIFFSR_SHARED")
    args = p.parse_args(argv)
    started = time.monotonic()
    missing = ensure_packages(args.wheelhouse)
    import torch

    from backend.weights import default_weights_path, load_weights

    say(f"torch {torch.__version__}, CUDA {torch.version.cuda}, python {sys.version.split()[0]}")
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            say("error: torch sees no CUDA GPU (CPU-only torch build or no driver); nothing to check")
            return 2
        say(
            f"GPU: {torch.cuda.get_device_name(torch.device(args.device))}, "
            f"{torch.cuda.get_device_properties(torch.device(args.device)).total_memory / 2**30:.0f} GiB"
        )
    from backend.runtime.cpu import cpu_info

    say(f"CPU: {cpu_info().describe()}")
    weights = default_weights_path(4)
    loaded = load_weights(weights, scale=4)
    cuda = args.device.startswith("cuda")
    precisions = (args.precisions or ("fp32,fp16,bf16" if cuda else "fp32,auto")).split(",")
    say("\n1. output against CPU fp32 (bundled default x4, |difference| in 8-bit DN)")
    rows, ok = check_correctness(loaded, args.device, precisions, args.shared)
    for r in rows:
        say("   " + json.dumps(r))
    lacking = f" (missing {', '.join(missing)}: network on tiles only)" if missing else ""
    say("\n2. upscale timings" + lacking)
    timings, failed = [], False
    per_mpx = None  # seconds per output Mpx, from the runs so far, to skip runs past the budget
    with tempfile.TemporaryDirectory() as tmp:
        for out_size in (int(s) for s in args.out_sizes.split(",") if s):
            for batch in (int(b) for b in args.batches.split(",") if b):
                elapsed = time.monotonic() - started
                estimate = per_mpx * out_size**2 / 1e6 if per_mpx else 0.0
                if elapsed + estimate > args.budget_s:
                    row = {
                        "out": f"{out_size}x{out_size}",
                        "batch": batch,
                        "status": f"skipped: about {estimate:.0f} s, past the {args.budget_s:.0f} s budget",
                    }
                else:
                    try:
                        row = (
                            time_tiles(loaded, args.device, out_size, batch)
                            if missing
                            else time_engine(weights, args.device, out_size, batch, Path(tmp))
                        )
                        per_mpx = max(per_mpx or 0.0, row["seconds"] / (out_size**2 / 1e6))
                    except Exception as exc:  # reported, then the next run
                        failed = True
                        row = {
                            "out": f"{out_size}x{out_size}",
                            "batch": batch,
                            "status": f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                        }
                        traceback.print_exc(limit=3)
                timings.append(row)
                say("   " + json.dumps(row))
    total = time.monotonic() - started
    verdict = "ok" if ok and not failed else ("MISMATCH" if not ok else "run failed")
    say(f"\n{verdict}: {total:.0f} s in all")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"correctness": rows, "timings": timings, "verdict": verdict, "seconds": total}, indent=1
            )
        )
    return 0 if ok and not failed else (1 if not ok else 2)


if __name__ == "__main__":
    sys.exit(main())
