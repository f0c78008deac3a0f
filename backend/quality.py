"""Quality check on the user's own imagery: does super-resolution beat bicubic here?

A model trained on one kind of imagery can do worse than plain bicubic on another, and
a user should find out on a small sample before running a whole country. We take a
sample of the layer at its native resolution as the reference, make it coarser by the
model's scale in several ways (:data:`CHECKS`: the antialiased bicubic reduction of SR
benchmarks, a point-sampled reduction without antialiasing, and a realistic sensor
product with blur, noise and JPEG; :mod:`backend.degradation`), restore each once with the
model and once with bicubic, and compare both with the reference: PSNR and SSIM on the
luma (Y, BT.601) channel for 3-band samples, on the band itself for 1-band samples, with
a border of ``scale`` pixels shaved as in the SR literature. The verdict says "helps"
only when the model helps under every one of them: a model that wins on the benchmark
reduction alone would flatter itself.

Outputs: a :class:`QualityReport`, and optionally a labelled PNG (one row per reduction:
degraded input | bicubic | SlimDiffSR | reference, each with its PSNR) and a
self-contained HTML report.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from backend.degradation import degrade as degrade_by
from backend.errors import UserInputError
from backend.metrics import psnr, rgb_to_y, ssim_index
from backend.model.lr_consistency import enlarge
from backend.regimes import image_crops

MIN_SAMPLE_LR = 16  # the degraded sample must keep at least this many pixels per side
PANEL_GAP = 8
LABEL_HEIGHT = 22  # pixels above each row of the PNG for the panels' labels

# (backend.degradation kind, what the user reads): how the sample is made coarser.
CHECKS = (
    ("bicubic", "antialiased bicubic reduction"),
    ("bicubic-point", "point-sampled reduction (no antialiasing)"),
    ("realistic", "sensor-like: blur, noise, JPEG"),
)


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
class ReductionScore:
    """Scores of the model and of bicubic on one way of making the sample coarser."""

    kind: str
    label: str
    psnr_sr: float
    ssim_sr: float
    psnr_bicubic: float
    ssim_bicubic: float

    @property
    def gain(self) -> float:
        return self.psnr_sr - self.psnr_bicubic

    def helps(self) -> bool:
        ssim_gain = self.ssim_sr - self.ssim_bicubic
        return self.gain > 0.1 or (self.gain > -0.1 and ssim_gain > 0.005)


@dataclass
class QualityReport:
    """Scores of the reduction where the model does worst (``psnr_sr`` ...), every reduction
    in ``checks``, and the verdict over all of them."""

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
    checks: list[ReductionScore] = field(default_factory=list)
    png: str | None = None
    html: str | None = None
    elapsed_s: float = 0.0


ProgressFn = Callable[[float, str], None]
LogFn = Callable[[str], None]


# -- metrics ----------------------------------------------------------------------------


def scores(pred: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(PSNR in dB, SSIM) of one-channel [1, 1, H, W] images in [0, 1], by backend.metrics:
    the numbers of the model card and of training validation."""
    return float(psnr(pred, reference)[0]), float(ssim_index(pred, reference)[0])


# -- degradation and restoration ------------------------------------------------------------


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))[None]


def _to_image(t: torch.Tensor) -> np.ndarray:
    return t[0].clamp(0, 1).permute(1, 2, 0).numpy()


def degrade(hr: np.ndarray, scale: int, kind: str = "bicubic") -> np.ndarray:
    """HxWxC in [0, 1] (H, W multiples of scale) -> coarser by ``scale`` (one of :data:`CHECKS`),
    8-bit quantized."""
    return _to_image(degrade_by(_to_tensor(hr), scale, kind))


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
    info = {
        "col_off": int(window.col_off),
        "row_off": int(window.row_off),
        "width": int(window.width),
        "height": int(window.height),
    }
    return sample, bands, info


# -- images and report -------------------------------------------------------------------


def encode_png(rgb: np.ndarray) -> bytes:
    """HxWx3 uint8 -> PNG bytes (Pillow, in memory: no GDAL side files)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


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


def _panel_rgb(panel: np.ndarray) -> np.ndarray:
    rgb = panel if panel.shape[2] == 3 else np.repeat(panel[..., :1], 3, axis=2)
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def labelled_grid(rows: list[tuple[str, list[tuple[str, np.ndarray]]]]) -> np.ndarray:
    """Rows of (row title, [(panel label, HxWxC [0, 1] panel), ...]) -> one uint8 RGB image,
    each row under a band with its title and each panel's label, white gaps between."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = rows[0][1][0][1].shape[:2]
    n = max(len(panels) for _, panels in rows)
    width = n * w + (n - 1) * PANEL_GAP
    row_height = 2 * LABEL_HEIGHT + h
    grid = np.full((len(rows) * row_height, width, 3), 255, np.uint8)
    for r, (_, panels) in enumerate(rows):
        top = r * row_height + 2 * LABEL_HEIGHT
        for i, (_, panel) in enumerate(panels):
            x = i * (w + PANEL_GAP)
            grid[top : top + h, x : x + w] = _panel_rgb(panel)
    image = Image.fromarray(grid, "RGB")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(14)
    for r, (title, panels) in enumerate(rows):
        y = r * row_height
        draw.text((2, y + 3), title, fill=(0, 0, 0), font=font)
        for i, (label, _) in enumerate(panels):
            draw.text((i * (w + PANEL_GAP) + 2, y + LABEL_HEIGHT + 3), label, fill=(60, 60, 60), font=font)
    return np.asarray(image)


def verdict_text(report: QualityReport) -> tuple[str, bool]:
    """One sentence over every check: "helps" only when the model helps under all of them."""
    checks = report.checks
    helps = bool(checks) and all(c.helps() for c in checks)
    per_check = "; ".join(f"{c.label}: {c.gain:+.2f} dB" for c in checks)
    if helps:
        return (
            f"SlimDiffSR beats bicubic on this sample at x{report.scale} under every reduction tried "
            f"({per_check}).",
            True,
        )
    worse = [c.label for c in checks if not c.helps()]
    return (
        f"SlimDiffSR does not beat bicubic on this sample at x{report.scale} under {', '.join(worse)} "
        f"({per_check}); inspect the images, try other weights, or fine-tune on this imagery.",
        False,
    )


def render_html(report: QualityReport, png_bytes: bytes, layer: str) -> str:
    esc = html.escape
    rows = "\n".join(
        f"<tr><th>{esc(c.label)}</th><td>{c.psnr_sr:.2f}</td><td>{c.psnr_bicubic:.2f}</td>"
        f"<td>{c.gain:+.2f}</td><td>{c.ssim_sr:.4f}</td><td>{c.ssim_bicubic:.4f}</td>"
        f"<td>{'yes' if c.helps() else 'no'}</td></tr>"
        for c in report.checks
    )
    img = base64.b64encode(png_bytes).decode("ascii")
    window = report.window
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>SlimDiffSR quality check</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1200px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:4px 10px;text-align:right}}
th{{background:#eee}}img{{width:100%;image-rendering:pixelated}}
.verdict{{font-size:1.2em;padding:.5em;background:{"#e6f4e6" if report.helps else "#fbeaea"}}}</style>
</head><body>
<h1>SlimDiffSR quality check</h1>
<p class="verdict">{esc(report.verdict)}</p>
<table><tr><th>made coarser by</th><th>PSNR SlimDiffSR</th><th>PSNR bicubic</th><th>gain (dB)</th>
<th>SSIM SlimDiffSR</th><th>SSIM bicubic</th><th>helps</th></tr>
{rows}</table>
<h2>Sample</h2>
<img src="data:image/png;base64,{img}" alt="per reduction: degraded input, bicubic, SlimDiffSR, reference">
<h2>How this was measured</h2>
<p>A {window.get("width")}x{window.get("height")} pixel sample of <code>{esc(layer)}</code>
(column {window.get("col_off")}, row {window.get("row_off")}, bands {esc(str(report.bands))}) was taken as the
reference, made x{report.scale} coarser in each way listed above (antialiased bicubic reduction; bicubic
sampling without antialiasing; a Gaussian blur of 0.5 x scale pixels, area reduction, noise of 2/255
and JPEG quality 85), then restored with the model and with bicubic interpolation. Metrics are
computed on the {esc(report.channel)} with a {report.scale}-pixel border excluded. The verdict says
"helps" only when the model helps under every reduction. The reductions are synthetic: real
imagery at a coarser resolution can behave differently, so look at the images as well as the
numbers.</p>
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
    report_progress: ProgressFn = progress or (lambda fraction, message: None)
    say: LogFn = log or (lambda message: None)
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
    say(
        f"sample: {window['width']}x{window['height']} pixels at column {window['col_off']}, "
        f"row {window['row_off']}, bands {bands}"
    )
    channel = f"band {bands[0]}" if replicated else "luma (Y) channel"

    def measured(image: np.ndarray) -> torch.Tensor:
        """HxWx3 -> [1, 1, H, W] luma (or the band itself), ``scale`` pixels shaved."""
        t = _to_tensor(image).double()
        y = t.mean(dim=1, keepdim=True) if replicated else rgb_to_y(t)
        return y[..., scale:-scale, scale:-scale]

    ref_c = measured(model_input)
    checks: list[ReductionScore] = []
    rows: list[tuple[str, list[tuple[str, np.ndarray]]]] = []
    for index, (kind, label) in enumerate(CHECKS):
        report_progress(0.3 + 0.6 * index / len(CHECKS), f"restoring the sample after {label}")
        lr = degrade(model_input, scale, kind)
        bicubic = bicubic_upscale(lr, scale)
        # degradation-aware weights: the experts mixed for this input, as the engine would
        crops = image_crops(torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)))[None].float())
        chosen = resolver.for_regime(resolver.estimate_regime(crops))
        if chosen.regime_description:
            say(f"{label}: {chosen.regime_description}")
        sr = chosen.super_resolve(lr)
        score = ReductionScore(kind, label, *scores(measured(sr), ref_c), *scores(measured(bicubic), ref_c))
        if any(np.isnan(v) for v in (score.psnr_sr, score.ssim_sr, score.psnr_bicubic, score.ssim_bicubic)):
            raise QualityError(
                "the quality check could not be measured on this sample (a score is not a "
                "number); choose another extent or bands"
            )
        checks.append(score)
        nearest = np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)
        panels = [
            ("input (nearest)", nearest),
            (f"bicubic {score.psnr_bicubic:.2f} dB", bicubic),
            (f"SlimDiffSR {score.psnr_sr:.2f} dB", sr),
            ("reference", model_input),
        ]
        if replicated:
            panels = [(t, p.mean(axis=2, keepdims=True)) for t, p in panels]
        rows.append((f"x{scale}, {label}: {score.gain:+.2f} dB", panels))
    report_progress(0.9, "measuring")
    worst = min(checks, key=lambda c: c.gain)
    report = QualityReport(
        psnr_sr=worst.psnr_sr,
        ssim_sr=worst.ssim_sr,
        psnr_bicubic=worst.psnr_bicubic,
        ssim_bicubic=worst.ssim_bicubic,
        verdict="",
        helps=False,
        scale=scale,
        device=resolver.description,
        weights=loaded.description,
        bands=bands,
        channel=channel,
        window=window,
        checks=checks,
    )
    report.verdict, report.helps = verdict_text(report)
    strip = labelled_grid(rows)
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
