"""LR consistency (one back-projection step): what it removes, what it keeps, where it runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F

from backend.engine import UpscaleOptions, upscale_raster
from backend.inference import SuperResolver
from backend.model.lr_consistency import (
    MATRIX_MAX_SIDE,
    enforce_lr_consistency,
    enlarge,
    enlarge_sparse,
    reduce,
)
from backend.weights import load_weights, save_safetensors
from devtools.compact import TINY, write_random_weights


def smooth_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """[1, 3, h, w] image-like values in [-1, 1]: low-pass noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, h // 4, w // 4, generator=g) * 2 - 1
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def test_a_consistent_image_is_left_unchanged() -> None:
    hr = smooth_image(64, 64)
    out = enforce_lr_consistency(hr, reduce(hr, 4), 4)
    assert torch.allclose(out, hr, atol=1e-6)


def test_a_brightness_drift_is_removed_and_detail_kept() -> None:
    """An error the input can see (here a brightness offset) is removed exactly."""
    hr = smooth_image(64, 64, seed=1)
    lr = reduce(hr, 4)
    drifted = hr + torch.tensor([0.08, -0.05, 0.03]).view(1, 3, 1, 1)
    out = enforce_lr_consistency(drifted, lr, 4)
    assert (drifted - hr).abs().mean() > 0.05
    assert (out - hr).abs().max() < 1e-5  # a constant is reduced and enlarged exactly
    # high frequencies the LR cannot see pass through untouched
    detail = torch.zeros_like(hr)
    detail[..., ::2, :] = 0.02
    detail[..., 1::2, :] = -0.02
    kept = enforce_lr_consistency(hr + detail, lr, 4) - hr
    assert torch.allclose(kept, detail, atol=2e-3)


def test_the_output_reduces_to_nearly_the_input() -> None:
    lr = smooth_image(32, 32, seed=2)
    sr = enlarge(lr, 4) + 0.1 * smooth_image(128, 128, seed=3)
    before = (reduce(sr, 4) - lr).abs().mean()
    after = (reduce(enforce_lr_consistency(sr, lr, 4), 4) - lr).abs().mean()
    assert after < 0.3 * before  # measured 0.22: one step, since reduce(enlarge(x)) is not x
    with pytest.raises(ValueError, match="not x4 of the input"):
        enforce_lr_consistency(sr[..., :100], lr, 4)


def test_the_weight_file_switches_it_on(tmp_path: Path) -> None:
    plain = load_weights(write_random_weights(tmp_path / "plain.safetensors", TINY, 4))
    assert plain.lr_consistency is False  # release files and older files: off
    path = save_safetensors(
        plain.model, tmp_path / "lrc.safetensors", 4, color_match=False, lr_consistency=True
    )
    loaded = load_weights(path)
    assert loaded.lr_consistency is True
    resolver = SuperResolver.from_weights(loaded, "cpu", "fp32")
    off = SuperResolver(loaded.model, 4, "cpu", "fp32", color_match=False)
    lr = (smooth_image(32, 32, seed=4)[0].permute(1, 2, 0).numpy() + 1) / 2
    x = torch.from_numpy(lr.transpose(2, 0, 1).copy())[None]
    err_on = (reduce(torch.from_numpy(resolver.super_resolve(lr)).permute(2, 0, 1)[None], 4) - x).abs().mean()
    err_off = (reduce(torch.from_numpy(off.super_resolve(lr)).permute(2, 0, 1)[None], 4) - x).abs().mean()
    assert err_on < 0.5 * err_off
    xs = torch.from_numpy(np.stack([lr, lr[::-1].copy()]).transpose(0, 3, 1, 2).copy()) * 2 - 1
    batch = resolver.consistent(resolver.restore(resolver.upsample(xs))[0], xs)
    single = resolver.super_resolve(lr, pad_multiple=resolver.multiple)
    assert np.abs((batch[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy() - single).max() < 1e-5


@pytest.mark.slow  # the tiny student over a whole crop, tiled and not
def test_tiles_agree_with_the_whole_image(rgb_crop, tmp_path: Path) -> None:
    """Back-projection is local: overlapping tiles give the single-tile result."""
    loaded = load_weights(write_random_weights(tmp_path / "w.safetensors", TINY, 4))
    resolver = SuperResolver(loaded.model, 4, "cpu", "fp32", color_match=False, lr_consistency=True)
    src, data = rgb_crop(160, "in.tif")
    upscale_raster(src, tmp_path / "one.tif", resolver, UpscaleOptions(tile_size=160))
    report = upscale_raster(src, tmp_path / "many.tif", resolver, UpscaleOptions(tile_size=64, overlap=16))
    assert report.tiles > 1
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "many.tif") as b:
        one, many = a.read().astype(np.float64), b.read().astype(np.float64)
    assert np.abs(one - many).mean() < 1.0
    # the engine applies it as the single-image path does
    expected = resolver.super_resolve(
        data.transpose(1, 2, 0).astype(np.float32) / 255, pad_multiple=resolver.multiple
    )
    assert np.abs(one - np.rint(expected * 255).transpose(2, 0, 1)).max() <= 1


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 3, 2, 3), (1, 3, 17, 40), (1, 1, 300, 512)])
@pytest.mark.parametrize("scale", [2, 4, 8])
def test_enlarge_is_torch_bicubic(shape: tuple[int, ...], scale: int) -> None:
    torch.manual_seed(scale)
    x = torch.rand(*shape) * 2 - 1
    want = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    torch.testing.assert_close(enlarge(x, scale), want, rtol=0, atol=2e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as inside the trainer
        got = enlarge(x, scale)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("shape", [(2, 3, 40, 56), (1, 1, 5, 5), (1, 3, 3, 4), (1, 2, 600, 7)])
@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("fraction", [0.0, 0.002, 0.03, 0.5])
def test_sparse_enlarge_is_torch_bicubic(shape: tuple[int, ...], scale: int, fraction: float) -> None:
    """Footprints or the dense fallback: the same values, borders and corners included."""
    torch.manual_seed(scale)
    x = torch.randn(*shape) * (torch.rand(*shape) < fraction)
    x[0, 0, 0, 0], x[-1, -1, -1, -1], x[0, -1, -1, 0] = 2.0, -1.5, 0.7  # corners: the clamped taps
    want = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    torch.testing.assert_close(enlarge_sparse(x, scale), want, rtol=0, atol=2e-6)


def test_enlarge_of_a_large_image_falls_back_to_torch() -> None:
    x = torch.rand(1, 1, MATRIX_MAX_SIDE + 1, 4)
    want = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    assert torch.equal(enlarge(x, 2), want)
