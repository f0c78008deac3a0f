"""LR synthesis: the shared operators (backend.degradation) and the training sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.degradation import (
    REDUCTIONS,
    blur,
    degrade,
    gaussian_psf,
    jpeg,
    realistic,
    reduce_by,
)
from backend.training.degradations import make_degrader
from backend.training.sensor_degradation import SensorDegradation, SensorSettings


def scene(h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth structures plus fine texture, [1, 3, h, w] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 3, h // 8, w // 8), generator=g)
    base = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return (0.8 * base + 0.2 * torch.rand((1, 3, h, w), generator=g)).clamp(0, 1)


def test_psf_is_normalized_and_anisotropic_along_its_angle() -> None:
    k = gaussian_psf(2.0, 0.5, 0.0)
    assert k.shape == (13, 13) and float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    var_x = float((k.sum(0) * (torch.arange(13) - 6) ** 2).sum())
    var_y = float((k.sum(1) * (torch.arange(13) - 6) ** 2).sum())
    assert var_x == pytest.approx(4.0, rel=0.05) and var_y == pytest.approx(1.0, rel=0.05)
    flat = torch.full((1, 1, 20, 20), 0.3)
    assert torch.allclose(blur(flat, k), flat, atol=1e-6)  # a flat image stays flat


@pytest.mark.parametrize("mode", REDUCTIONS)
def test_reductions_keep_flat_images_and_shapes(mode: str) -> None:
    flat = torch.full((2, 3, 32, 48), 0.4)
    out = reduce_by(flat, 4, mode)
    assert out.shape == (2, 3, 8, 12)
    assert torch.allclose(out, torch.full_like(out, 0.4), atol=1e-5)


def test_point_sampling_aliases_and_antialiasing_does_not() -> None:
    """A pattern at the HR Nyquist frequency: averaging removes it, point sampling keeps it
    as a false low-frequency signal (the aliasing the model must not amplify)."""
    stripes = (torch.arange(64) % 2).float().expand(1, 3, 64, 64).clone()
    assert float(reduce_by(stripes, 4, "area").std()) < 1e-6
    phased = reduce_by(stripes, 4, "bilinear-point", phase=(0.0, 0.5))
    assert float((phased - reduce_by(stripes, 4, "bilinear-point")).abs().max()) > 0.1


def test_sampling_phase_moves_the_sample_points() -> None:
    ramp = torch.arange(64, dtype=torch.float32).expand(1, 1, 64, 64).clone()
    centred = reduce_by(ramp, 4, "bilinear-point")
    shifted = reduce_by(ramp, 4, "bilinear-point", phase=(0.0, 1.0))
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert torch.allclose(shifted[inner] - centred[inner], torch.ones_like(centred[inner]), atol=1e-4)
    np.testing.assert_allclose(centred[0, 0, 0, :3].numpy(), [1.5, 5.5, 9.5], atol=1e-4)


def test_jpeg_round_trip_is_close_and_lossy() -> None:
    image = scene(64, 48)
    q95, q70 = jpeg(image, 95), jpeg(image, 70)
    assert q95.shape == image.shape
    err95, err70 = float((q95 - image).abs().mean()), float((q70 - image).abs().mean())
    assert 0 < err95 < err70 < 0.05


def test_realistic_degradation_is_fixed_and_blurs() -> None:
    hr = scene(96, 96)
    a, b = realistic(hr, 4, seed=3), realistic(hr, 4, seed=3)
    assert a.shape == (1, 3, 24, 24) and torch.equal(a, b)
    clean = degrade(hr, 4, "bicubic")
    # the PSF removes contrast the clean reduction keeps
    assert float(a.std()) < float(clean.std())


def test_sensor_sampler_is_seeded_varied_and_in_range() -> None:
    d = make_degrader("sensor", 4)
    assert isinstance(d, SensorDegradation) and d.describe()["kind"] == "sensor"
    hr = torch.cat([scene(64, 64, seed=s) for s in range(6)])
    a = d(hr, torch.Generator().manual_seed(7))
    b = d(hr, torch.Generator().manual_seed(7))
    c = d(hr, torch.Generator().manual_seed(8))
    assert a.shape == (6, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    with pytest.raises(ValueError, match="multiple of the scale"):
        d(torch.rand(1, 3, 30, 32), torch.Generator())


def test_sensor_sampler_clean_only_is_the_benchmark_reduction() -> None:
    hr = scene(64, 64)
    d = SensorDegradation(4, SensorSettings(clean_prob=1.0))
    np.testing.assert_allclose(d(hr, torch.Generator()).numpy(), degrade(hr, 4, "bicubic").numpy())


def test_a_regime_with_a_clean_share_keeps_its_own_lr_otherwise() -> None:
    """``--clean-share`` for an expert: that share of the crops gets the benchmark reduction,
    the others the regime's own synthesis, and the weights record the share."""
    hr = torch.cat([scene(64, 64, seed=s) for s in range(12)])
    bench = degrade(hr, 4, "bicubic")
    own = make_degrader("sensor-soft", 4)
    assert own.describe()["clean_prob"] == 0.0
    every = make_degrader("sensor-soft", 4, clean_share=1.0)
    np.testing.assert_allclose(every(hr, torch.Generator()).numpy(), bench.numpy())
    half = make_degrader("sensor-soft", 4, clean_share=0.5)
    assert (
        half.describe()["clean_prob"] == 0.5 and half.describe()["psf_sigma"] == own.describe()["psf_sigma"]
    )
    lr = half(hr, torch.Generator().manual_seed(3))
    clean = [bool(torch.allclose(a, b)) for a, b in zip(lr, bench, strict=True)]
    assert 2 <= sum(clean) <= 10  # some of each, seeded
    assert torch.equal(lr, half(hr, torch.Generator().manual_seed(3)))
    # the full sensor distribution keeps its other settings too
    assert make_degrader("sensor", 4, clean_share=0.1).describe()["noise_max"] == SensorSettings().noise_max


@pytest.mark.parametrize("field_name", ["psf_prob", "noise_prob", "jpeg_prob"])
def test_each_sensor_effect_changes_the_lr(field_name: str) -> None:
    hr = scene(64, 64)
    off = {
        "clean_prob": 0.0,
        "psf_prob": 0.0,
        "noise_prob": 0.0,
        "jpeg_prob": 0.0,
        "reduction_probs": (0.0, 1.0, 0.0, 0.0, 0.0),
    }
    base = SensorDegradation(4, SensorSettings(**off))(hr, torch.Generator().manual_seed(1))
    with_effect = SensorSettings(**{**off, field_name: 1.0})
    on = SensorDegradation(4, with_effect)(hr, torch.Generator().manual_seed(1))
    np.testing.assert_allclose(base.numpy(), degrade(hr, 4, "bicubic").numpy(), atol=1e-6)
    assert float((on - base).abs().mean()) > 1 / 255
