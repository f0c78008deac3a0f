"""Quality check on the user's own imagery: does super-resolution beat bicubic here?

A model trained on one kind of imagery can do worse than plain bicubic on another, and
a user should find out on a small sample before running a whole country. We take a
sample of the layer at its native resolution as the reference, degrade it by the model's
scale (antialiased bicubic downsampling, the usual synthetic SR degradation), restore it
once with the model and once with bicubic, and compare both with the reference:
PSNR and SSIM on the luma (Y, BT.601) channel for 3-band samples, on the band itself
for 1-band samples, with a border of ``scale`` pixels shaved as in the SR literature.

Outputs: a :class:`QualityReport`, and optionally a side-by-side PNG
(degraded input | bicubic | SlimDiffSR | reference) and a self-contained HTML report.
"""

from __future__ import annotations

import base64
import html
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from backend.errors import UserInputError
from backend.metrics import Y_WEIGHTS
from backend.metrics import ssim as ssim_metric
from backend.model.lr_consistency import enlarge, reduce

MIN_SAMPLE_LR = 16  # the degraded sample must keep at least this many pixels per side
PANEL_GAP = 8


class QualityError(UserInputError, ValueError):
    """A quality check that cannot run; the message says what, why and what to do."""


@dataclass
class AssessOptions:
    """What to check. ``bounds`` (minx, miny, maxx, maxy) are in the raster's CRS."""

    weights: str | None = None
    scale: int | None = None
    bands: list[int] | None = None
    device: str = "auto"
    precision: str = "auto"
    sample_size: int = 512
    bounds: list[float] | None = None
    png: str | None = None
    html: str | None = None


@dataclass
class QualityReport:
    psnr_sr: float
    ssim_sr: float
    psnr_bicubic: float
    ssim_bicubic: float
    verdict: str
    helps: bool
    scale: int
    device: str
    weights: str
    bands: list[int]
    channel: str
    window: dict[str, int] = field(default_factory=dict)
    png: str | None = None
    html: str | None = None
    elapsed_s: float = 0.0


ProgressFn = Callable[[float, str], None]
LogFn = Callable[[str], None]


# -- metrics ----------------------------------------------------------------------------


def luma(image: np.ndarray) -> np.ndarray:
    """HxWx3 RGB in [0, 1] -> HxW BT.601 Y in [16/255, 235/255], as SR papers measure."""
    return (16.0 + image @ np.array(Y_WEIGHTS, dtype=np.float64)) / 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two images in [0, 1] (dB; inf when identical)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two HxW images in [0, 1] (Gaussian window 11, sigma 1.5)."""
    x = torch.as_tensor(np.asarray(a, np.float64))[None, None]
    y = torch.as_tensor(np.asarray(b, np.float64))[None, None]
    return float(ssim_metric(x, y))


# -- degradation and restoration ------------------------------------------------------------


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))[None]


def _to_image(t: torch.Tensor) -> np.ndarray:
    return t[0].clamp(0, 1).permute(1, 2, 0).numpy()


def degrade(hr: np.ndarray, scale: int) -> np.ndarray:
    """HxWxC in [0, 1] (H, W multiples of scale) -> antialiased bicubic downsampling."""
    return _to_image(reduce(_to_tensor(hr), scale))


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    return _to_image(enlarge(_to_tensor(lr), scale))


# -- reading the sample -------------------------------------------------------------------


def _sample_window(src, bounds: list[float] | None, size: int, scale: int):
    """A window of at most ``size`` pixels per side, centred in ``bounds`` (or the raster)."""
    from rasterio.windows import Window, from_bounds

    full = Window(0, 0, src.width, src.height)
    region = full
    if bounds:
        try:
            region = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
            region = region.intersection(full)
        except Exception:  # rasterio raises WindowError or ValueError here
            raise QualityError(
                "the chosen extent does not overlap the layer; pick an extent inside the layer"
            ) from None
    width = min(int(region.width), size) // scale * scale
    height = min(int(region.height), size) // scale * scale
    if width < MIN_SAMPLE_LR * scale or height < MIN_SAMPLE_LR * scale:
        raise QualityError(
            f"the sample region is too small ({int(region.width)}x{int(region.height)} pixels); "
            f"it needs at least {MIN_SAMPLE_LR * scale} pixels per side at x{scale}: choose a larger extent"
        )
    col = int(region.col_off) + (int(region.width) - width) // 2
    row = int(region.row_off) + (int(region.height) - height) // 2
    return Window(col, row, width, height)


def _choose_bands(count: int, colorinterp: tuple, bands: list[int] | None) -> list[int]:
    """The engine's band choice (so the check matches the upscale run), limited to 1 or 3 bands."""
    from backend.engine.options import EngineError
    from backend.engine.radiometry import select_bands

    try:
        chosen = list(select_bands(count, colorinterp, tuple(bands) if bands else None, False)[0])
    except EngineError as exc:
        raise QualityError(str(exc)) from None
    if len(chosen) not in (1, 3):
        raise QualityError(
            f"the quality check uses 1 or 3 bands (got {len(chosen)}): choose them, e.g. '4,3,2' or '1'"
        )
    return chosen


def _stretch(data: np.ndarray, valid: np.ndarray, dtype: str) -> np.ndarray:
    """Bands x H x W -> H x W x bands in [0, 1] with the engine's value range for the group.

    The same mapping is applied to the reference and to every restoration, so the scores do
    not depend on it; using the engine's keeps the sample's look identical to an upscale run.
    """
    from backend.engine.radiometry import value_range

    values = data[:, valid] if valid.any() else data.reshape(data.shape[0], -1)
    try:
        lo, hi = value_range(dtype, values.ravel().astype(np.float64))
    except UserInputError as exc:
        raise QualityError(str(exc)) from None
    out = np.clip((data.astype(np.float32) - lo) / (hi - lo), 0, 1)
    if valid.any() and not valid.all():
        for band in out:
            band[~valid] = float(band[valid].mean())
    return out.transpose(1, 2, 0)


def read_sample(
    path: str, options: AssessOptions, scale: int
) -> tuple[np.ndarray, list[int], dict[str, int]]:
    import rasterio

    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise QualityError(f"cannot open {path}: {str(exc).splitlines()[0][:160]}") from None
    with src:
        bands = _choose_bands(src.count, tuple(src.colorinterp), options.bands)
        window = _sample_window(src, options.bounds, int(options.sample_size), scale)
        data = src.read(bands, window=window)
        mask = src.read_masks(bands, window=window)
        valid = np.all(mask > 0, axis=0)
        if data.dtype.kind == "f":  # NaN and inf are never data, declared or not
            valid &= np.isfinite(data).all(axis=0)
        if not valid.any():
            raise QualityError(
                f"the sample region of {Path(path).name} has no valid pixel (all nodata or not finite); "
                "choose an extent with data, or other bands"
            )
        if valid.mean() < 0.5:
            raise QualityError(
                "more than half of the sample region is nodata; choose an extent inside the image"
            )
        sample = _stretch(data, valid, src.dtypes[bands[0] - 1])
    info = {"col_off": int(window.col_off), "row_off": int(window.row_off),
            "width": int(window.width), "height": int(window.height)}
    return sample, bands, info


# -- images and report -------------------------------------------------------------------


def encode_png(rgb: np.ndarray) -> bytes:
    """HxWx3 uint8 -> PNG bytes, standard library only (no GDAL side files, no extra package)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[row].tobytes() for row in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    return png


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    _write_atomic(Path(path), encode_png(rgb))


def _write_atomic(path: Path, data: bytes) -> None:
    """Write through ``<name>.part`` and rename: a failed write leaves neither a partial file
    nor its temporary, and an older file at ``path`` is kept."""
    tmp = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise QualityError(
            f"cannot write {path} ({exc.strerror}); choose a writable folder with free space"
        ) from None


def side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    """Equal-sized HxWxC [0, 1] panels -> one uint8 RGB strip with white gaps."""
    h, w = panels[0].shape[:2]
    strip = np.full((h, len(panels) * w + (len(panels) - 1) * PANEL_GAP, 3), 255, np.uint8)
    for i, panel in enumerate(panels):
        rgb = panel if panel.shape[2] == 3 else np.repeat(panel[..., :1], 3, axis=2)
        x = i * (w + PANEL_GAP)
        strip[:, x : x + w] = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    return strip


PANEL_TITLES = ("Degraded input (nearest)", "Bicubic", "SlimDiffSR", "Reference (your imagery)")


def verdict_text(report: QualityReport) -> tuple[str, bool]:
    gain = report.psnr_sr - report.psnr_bicubic
    ssim_gain = report.ssim_sr - report.ssim_bicubic
    helps = gain > 0.1 or (gain > -0.1 and ssim_gain > 0.005)
    if helps:
        return (
            f"SlimDiffSR beats bicubic on this sample: {gain:+.2f} dB PSNR, {ssim_gain:+.4f} SSIM "
            f"at x{report.scale}.", True
        )
    return (
        f"SlimDiffSR does not beat bicubic on this sample ({gain:+.2f} dB PSNR, {ssim_gain:+.4f} SSIM at "
        f"x{report.scale}); this imagery may differ from what the model was trained on: inspect the "
        "images, try other weights or another region.", False
    )


def render_html(report: QualityReport, png_bytes: bytes, layer: str) -> str:
    esc = html.escape
    titles = "".join(f"<th>{esc(t)}</th>" for t in PANEL_TITLES)
    img = base64.b64encode(png_bytes).decode("ascii")
    window = report.window
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>SlimDiffSR quality check</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1200px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:4px 10px;text-align:right}}
th{{background:#eee}}img{{width:100%;image-rendering:pixelated}}
.verdict{{font-size:1.2em;padding:.5em;background:{'#e6f4e6' if report.helps else '#fbeaea'}}}</style>
</head><body>
<h1>SlimDiffSR quality check</h1>
<p class="verdict">{esc(report.verdict)}</p>
<table><tr><th></th><th>PSNR (dB, higher is better)</th><th>SSIM (0-1, higher is better)</th></tr>
<tr><th>SlimDiffSR</th><td>{report.psnr_sr:.2f}</td><td>{report.ssim_sr:.4f}</td></tr>
<tr><th>Bicubic</th><td>{report.psnr_bicubic:.2f}</td><td>{report.ssim_bicubic:.4f}</td></tr></table>
<h2>Sample</h2>
<table><tr>{titles}</tr></table>
<img src="data:image/png;base64,{img}" alt="degraded input, bicubic, SlimDiffSR, reference">
<h2>How this was measured</h2>
<p>A {window.get('width')}x{window.get('height')} pixel sample of <code>{esc(layer)}</code>
(column {window.get('col_off')}, row {window.get('row_off')}, bands {esc(str(report.bands))}) was taken as the
reference, reduced x{report.scale} with antialiased bicubic downsampling, then restored with the
model and with bicubic interpolation. Metrics are computed on the {esc(report.channel)} with a
{report.scale}-pixel border excluded. The degradation is synthetic: real imagery at a coarser
resolution can behave differently, so look at the images as well as the numbers.</p>
<p>Model: {esc(report.weights)}; device: {esc(report.device)}.</p>
</body></html>
"""


# -- the check ----------------------------------------------------------------------------


def assess(
    path: str,
    options: AssessOptions,
    progress: ProgressFn | None = None,
    log: LogFn | None = None,
) -> QualityReport:
    """Run the quality check on ``path`` and write the requested PNG/HTML outputs."""
    from backend.inference import SuperResolver
    from backend.weights import default_weights_path, load_weights

    started = time.monotonic()
    report_progress = progress or (lambda fraction, message="": None)
    say = log or (lambda message: None)
    report_progress(0.0, "loading the model")
    weights_path = options.weights or str(default_weights_path(options.scale or 4))
    loaded = load_weights(weights_path, scale=options.scale)
    scale = loaded.scale
    resolver = SuperResolver.from_weights(loaded, options.device, options.precision)
    say(f"device: {resolver.description}")
    say(f"model: {loaded.description}")
    report_progress(0.2, "reading the sample")
    reference, bands, window = read_sample(path, options, scale)
    replicated = reference.shape[2] == 1
    model_input = np.repeat(reference, 3, axis=2) if replicated else reference
    say(f"sample: {window['width']}x{window['height']} pixels at column {window['col_off']}, "
        f"row {window['row_off']}, bands {bands}")
    report_progress(0.3, "degrading and restoring the sample")
    lr = degrade(model_input, scale)
    bicubic = bicubic_upscale(lr, scale)
    sr = resolver.super_resolve(lr)
    report_progress(0.9, "measuring")
    if replicated:
        ref_c, sr_c, bic_c = reference[..., 0], sr.mean(axis=2), bicubic[..., 0]
        channel = f"band {bands[0]}"
    else:
        ref_c, sr_c, bic_c = luma(reference), luma(sr), luma(bicubic)
        channel = "luma (Y) channel"
    shave = (slice(scale, -scale), slice(scale, -scale))
    report = QualityReport(
        psnr_sr=psnr(sr_c[shave], ref_c[shave]),
        ssim_sr=ssim(sr_c[shave], ref_c[shave]),
        psnr_bicubic=psnr(bic_c[shave], ref_c[shave]),
        ssim_bicubic=ssim(bic_c[shave], ref_c[shave]),
        verdict="",
        helps=False,
        scale=scale,
        device=resolver.description,
        weights=loaded.description,
        bands=bands,
        channel=channel,
        window=window,
    )
    scores = (report.psnr_sr, report.ssim_sr, report.psnr_bicubic, report.ssim_bicubic)
    if any(np.isnan(v) for v in scores):
        raise QualityError("the quality check could not be measured on this sample (a score is not a "
                           "number); choose another extent or bands")
    report.verdict, report.helps = verdict_text(report)
    nearest = np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)
    shown = [nearest, bicubic, sr, model_input]
    if replicated:
        shown = [p.mean(axis=2, keepdims=True) for p in shown]
    strip = side_by_side(shown)
    # Everything is computed before anything is written, and a failure while writing the
    # second file removes the first: the check leaves both files or none.
    png_bytes = encode_png(strip)
    outputs = []
    if options.png:
        outputs.append((Path(options.png), png_bytes))
    if options.html:
        outputs.append((Path(options.html), render_html(report, png_bytes, path).encode("utf-8")))
    written: list[Path] = []
    try:
        for target, data in outputs:
            _write_atomic(target, data)
            written.append(target)
    except BaseException:
        for target in written:
            target.unlink(missing_ok=True)
        raise
    report.png = options.png or None
    report.html = options.html or None
    report.elapsed_s = round(time.monotonic() - started, 3)
    report_progress(1.0, "done")
    return report
