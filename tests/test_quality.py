"""The quality check (backend/quality.py): metrics, degradation, outputs, user errors."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from conftest import write_raster
from rasterio.transform import from_origin

from backend.metrics import psnr, rgb_to_y, ssim_index
from backend.quality import (
    CHECKS,
    LABEL_HEIGHT,
    PANEL_GAP,
    AssessOptions,
    QualityError,
    QualityReport,
    ReductionScore,
    assess,
    bicubic_upscale,
    degrade,
    encode_png,
    scores,
    verdict_text,
)


def smooth_image(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """Image-like test data: smooth structures plus a little texture, in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * x + k) * np.cos(4 * y - k) for k in range(c)], axis=-1)
    return np.clip(0.5 + 0.35 * base + 0.05 * rng.standard_normal((h, w, c)), 0, 1).astype(np.float32)


def utm_raster(path, data: np.ndarray, dtype: str = "uint16", nodata=None) -> str:
    """``data`` as ``dtype`` in UTM 21N, 30 m pixels, its corner at (500 km, 7200 km)."""
    transform = from_origin(500000, 7200000, 30, 30)
    return str(write_raster(path, data.astype(dtype), crs="EPSG:32621", transform=transform, nodata=nodata))


def test_metrics_on_known_cases() -> None:
    """The check's scores are backend.metrics' (identical images: the metrics' 100 dB cap)."""
    a = torch.from_numpy(smooth_image(64, 64, 1)[..., 0]).double()[None, None]
    assert scores(a, a) == pytest.approx((100.0, 1.0))
    # one implementation: the same numbers as the metrics of training and the model card, on
    # the BT.601 luma the check measures, for identical images as for different ones
    rgb = torch.from_numpy(smooth_image(48, 40, 3).transpose(2, 0, 1).copy()).double()[None]
    for pred in (rgb, (rgb + 0.03 * torch.cos(rgb * 20)).clamp(0, 1)):
        y_pred, y_ref = rgb_to_y(pred), rgb_to_y(rgb)
        expected = (float(psnr(y_pred, y_ref)[0]), float(ssim_index(y_pred, y_ref)[0]))
        assert scores(y_pred, y_ref) == expected
    assert scores(rgb_to_y(rgb), rgb_to_y(rgb))[0] == 100.0
    p, s = scores(a + 0.01, a)
    assert p == pytest.approx(40.0, abs=1e-4)  # mse 1e-4 -> 40 dB
    assert 0.9 < scores((a + 0.01).clamp(0, 1), a)[1] < 1.0
    assert scores(torch.zeros_like(a), a)[1] < 0.1


@pytest.mark.parametrize("kind", [k for k, _ in CHECKS])
def test_degrade_and_bicubic_shapes_and_ranges(kind: str) -> None:
    hr = smooth_image(96, 128, 3)
    lr = degrade(hr, 4, kind)
    assert lr.shape == (24, 32, 3) and 0 <= lr.min() and lr.max() <= 1
    np.testing.assert_allclose(lr * 255, np.round(lr * 255), atol=1e-4)  # 8-bit levels, as products
    up = bicubic_upscale(lr, 4)
    assert up.shape == hr.shape
    first = (torch.from_numpy(np.ascontiguousarray(x[..., 0]))[None, None] for x in (up, hr))
    assert scores(*first)[0] > 20  # a smooth image survives x4 bicubic well


def _report(*gains: tuple[float, float]) -> QualityReport:
    checks = [
        ReductionScore(kind, label, 30.0 + g, 0.8 + s, 30.0, 0.8)
        for (kind, label), (g, s) in zip(CHECKS, gains, strict=True)
    ]
    return QualityReport(0, 0, 0, 0, "", False, 4, "cpu", "w", [1, 2, 3], "luma", checks=checks)


def test_verdict_helps_only_under_every_reduction() -> None:
    """A model that wins on the benchmark reduction but loses on another must not be called helpful."""
    text, helps = verdict_text(_report((1.0, 0.02), (0.5, 0.01), (0.3, 0.0)))
    assert helps and "under every reduction" in text and "+1.00 dB" in text
    text, helps = verdict_text(_report((1.0, 0.02), (-1.5, -0.02), (0.3, 0.0)))
    assert not helps and "does not beat bicubic" in text
    assert f"under {CHECKS[1][1]} (" in text and f"{CHECKS[1][1]}: -1.50 dB" in text
    # within 0.1 dB but clearly better structure still counts as helping
    assert verdict_text(_report((0.05, 0.01), (0.5, 0.0), (0.2, 0.0)))[1]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_png_encoder_writes_a_valid_png(tmp_path) -> None:
    rgb = (smooth_image(20, 30, 3) * 255).astype(np.uint8)
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(rgb))
    with rasterio.open(path) as src:
        assert (src.count, src.height, src.width) == (3, 20, 30)
        assert np.array_equal(src.read().transpose(1, 2, 0), rgb)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_assess_reports_both_methods_and_writes_outputs(tmp_path, tiny_weights) -> None:
    data = smooth_image(200, 180, 4).transpose(2, 0, 1) * 3000 + 500
    src = utm_raster(tmp_path / "in.tif", data)
    options = AssessOptions(
        weights=str(tiny_weights),
        bands=[3, 2, 1],
        precision="fp32",
        sample_size=128,
        png=str(tmp_path / "out" / "q.png"),
        html=str(tmp_path / "q.html"),
    )
    seen: list[float] = []
    report = assess(src, options, progress=lambda f, m="": seen.append(f))
    assert report.scale == 4 and report.bands == [3, 2, 1] and report.channel.startswith("luma")
    assert report.window == {"col_off": 26, "row_off": 36, "width": 128, "height": 128}
    assert report.psnr_bicubic > 25 and 0 < report.ssim_bicubic <= 1
    assert np.isfinite(report.psnr_sr) and -1 <= report.ssim_sr <= 1
    assert report.device.startswith("cpu (") and report.device.endswith(", fp32")
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert [c.kind for c in report.checks] == [k for k, _ in CHECKS]
    worst = min(report.checks, key=lambda c: c.gain)
    assert (report.psnr_sr, report.psnr_bicubic) == (worst.psnr_sr, worst.psnr_bicubic)
    assert report.helps == all(c.helps() for c in report.checks)
    # blur, noise and JPEG cost bicubic more than the clean reduction does
    by_kind = {c.kind: c for c in report.checks}
    assert by_kind["realistic"].psnr_bicubic < by_kind["bicubic"].psnr_bicubic
    with rasterio.open(report.png) as png:
        assert (png.width, png.height) == (4 * 128 + 3 * PANEL_GAP, len(CHECKS) * (2 * LABEL_HEIGHT + 128))
        strip = png.read()
    assert (strip[:, :LABEL_HEIGHT, :] < 128).any()  # a label is drawn above the panels
    page = (tmp_path / "q.html").read_text()
    assert all(f"{c.psnr_sr:.2f}" in page and c.label in page for c in report.checks)
    assert "data:image/png;base64," in page
    assert not list(tmp_path.rglob("*.part"))


def test_assess_single_band_and_extent(tmp_path, tiny_weights) -> None:
    data = smooth_image(160, 160, 1).transpose(2, 0, 1) * 200
    src = utm_raster(tmp_path / "pan.tif", data, dtype="uint8")
    # the south-east quarter, in map coordinates
    bounds = [500000 + 80 * 30, 7200000 - 160 * 30, 500000 + 160 * 30, 7200000 - 80 * 30]
    report = assess(
        src, AssessOptions(weights=str(tiny_weights), precision="fp32", bounds=bounds, sample_size=512)
    )
    assert report.bands == [1] and report.channel == "band 1"
    assert report.window == {"col_off": 80, "row_off": 80, "width": 80, "height": 80}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bounds": [0, 0, 10, 10]}, "does not overlap the layer"),
        ({"bands": [1, 2]}, "uses 1 or 3 bands"),
        ({"bands": [5, 6, 7]}, "band 5 does not exist"),
        ({"sample_size": 40}, "too small"),
    ],
)
def test_assess_user_errors(tmp_path, tiny_weights, options, message) -> None:
    src = utm_raster(tmp_path / "in.tif", smooth_image(100, 100, 3).transpose(2, 0, 1) * 1000)
    with pytest.raises(QualityError, match=message):
        assess(src, AssessOptions(weights=str(tiny_weights), precision="fp32", **options))


def test_assess_refuses_a_mostly_nodata_sample(tmp_path, tiny_weights) -> None:
    data = smooth_image(100, 100, 3).transpose(2, 0, 1) * 1000 + 1
    data[:, :, :70] = 0
    src = utm_raster(tmp_path / "collar.tif", data, nodata=0)
    with pytest.raises(QualityError, match="nodata"):
        assess(src, AssessOptions(weights=str(tiny_weights), precision="fp32"))
