"""The one-image pipeline reproduces the release's test script; devices and precisions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.inference import (
    ColorStats,
    InferenceError,
    SuperResolver,
    cpu_has_fast_bf16,
    reflect_pad,
)
from backend.model import SlimDiffSRStudent
from backend.runtime.cpu import cpu_info


@pytest.fixture(scope="module")
def tiny_model(tiny_config) -> SlimDiffSRStudent:
    torch.manual_seed(0)
    return SlimDiffSRStudent(tiny_config).eval()


def release_pipeline(model: SlimDiffSRStudent, lr: np.ndarray, scale: int) -> np.ndarray:
    """The release's test script, literally: NCHW fp32, pad to 256, own statistics."""
    x = torch.from_numpy(lr.transpose(2, 0, 1).copy())[None] * 2 - 1
    x = F.interpolate(x, scale_factor=scale, mode="bicubic")
    _, _, h, w = x.shape
    x = F.pad(x, (0, (256 - w % 256) % 256, 0, (256 - h % 256) % 256), mode="reflect")
    with torch.no_grad():
        sr = model(x)[1][:, :, :h, :w]
    sr = (sr - sr.mean(dim=[2, 3], keepdim=True)) / sr.std(dim=[2, 3], keepdim=True) * x.std(
        dim=[2, 3], keepdim=True
    ) + x.mean(dim=[2, 3], keepdim=True)
    return (sr[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth, image-like test input in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], -1) * 0.3 + 0.5
    return np.clip(base + 0.05 * rng.standard_normal((h, w, 3)), 0, 1).astype(np.float32)


@pytest.mark.parametrize("scale", [4, 8])
def test_super_resolve_reproduces_release_pipeline(tiny_model, scale) -> None:
    lr = _image(70, 90)  # 280x360 at x4: padded to 512x512 by the release
    resolver = SuperResolver(tiny_model, scale, "cpu", "fp32")
    ours = resolver.super_resolve(lr)
    ref = release_pipeline(tiny_model, lr, scale)
    assert ours.shape == (70 * scale, 90 * scale, 3)
    assert np.abs(ours - ref).max() <= 1e-4
    assert ours.std() > 0.01


@pytest.mark.parametrize("size", [(13, 17), (1, 9), (5, 7)])
def test_odd_and_tiny_images_do_not_fail(tiny_model, size) -> None:
    """The release crashes when the reflect pad exceeds the image; we keep mirroring."""
    lr = _image(*size)
    out = SuperResolver(tiny_model, 4, "cpu", "fp32").super_resolve(lr)
    assert out.shape == (size[0] * 4, size[1] * 4, 3)
    assert np.isfinite(out).all()


def test_reflect_pad_matches_torch_when_possible_and_mirrors_beyond() -> None:
    x = torch.arange(12.0).view(1, 1, 3, 4)
    assert torch.equal(reflect_pad(x, 2, 3), F.pad(x, (0, 3, 0, 2), mode="reflect"))
    big = reflect_pad(x, 7, 9)
    assert big.shape == (1, 1, 10, 13)
    # Mirroring continues: the row after the first reflection is the original again.
    assert torch.equal(big[0, 0, :3, :4], x[0, 0])


def test_batch_of_tiles_equals_tiles_one_by_one(tiny_model) -> None:
    resolver = SuperResolver(tiny_model, 4, "cpu", "fp32")
    tiles = np.stack([_image(24, 24, seed) for seed in range(3)])
    x = torch.from_numpy(tiles.transpose(0, 3, 1, 2).copy()) * 2 - 1
    up = resolver.upsample(x)
    batched, _ = resolver.restore(up)
    single = torch.cat([resolver.restore(u[None])[0] for u in up])
    assert batched.shape == (3, 3, 96, 96)
    assert (batched - single).abs().max() <= 1e-5


def test_global_statistics_are_used_instead_of_the_image_s_own(tiny_model) -> None:
    resolver = SuperResolver(tiny_model, 4, "cpu", "fp32")
    lr = _image(16, 16)
    stats = ColorStats(
        sr_mean=np.zeros(3), sr_std=np.ones(3), ref_mean=np.full(3, 0.5), ref_std=np.full(3, 0.1)
    )
    own = resolver.super_resolve(lr)
    fixed = resolver.super_resolve(lr, stats)
    assert not np.allclose(own, fixed)
    x = torch.from_numpy(lr.transpose(2, 0, 1).copy())[None] * 2 - 1
    sr, _ = resolver.restore(resolver.upsample(x), 256)
    expected = ((sr * 0.1 + 0.5) / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.abs(fixed - expected).max() < 1e-6


def test_an_image_as_one_tile_with_its_own_network_statistics_matches_the_release_way(tiny_model) -> None:
    """super_resolve with the network's global statistics recorded on the image itself (a
    raster of one tile, as the benchmark's tile rows run it) gives the release's output;
    statistics of another image change it."""
    resolver = SuperResolver(tiny_model, 4, "cpu", "fp32")
    lr, other = _image(16, 16), _image(16, 16, 7)

    def statistics_of(image: np.ndarray):
        x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None] * 2 - 1
        return resolver.record_statistics(resolver.pad(resolver.upsample(x)))

    def run(statistics=None) -> np.ndarray:
        return resolver.super_resolve(lr, pad_multiple=resolver.multiple, statistics=statistics)

    own = run()
    assert np.abs(run(statistics_of(lr)) - own).max() < 1e-5
    assert np.abs(run(statistics_of(other)) - own).max() > 1e-4


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="this CPU has no native bf16")
def test_bf16_network_error_is_small_on_a_random_student(tiny_model) -> None:
    """Raw network output in bf16 stays within 1 % relative L2 (centred) of fp32."""
    x = F.avg_pool2d(torch.rand(1, 3, 128, 192, generator=torch.Generator().manual_seed(0)) * 2 - 1, 5, 1, 2)
    a = SuperResolver(tiny_model, 4, "cpu", "fp32").run_network(x)
    b = SuperResolver(tiny_model, 4, "cpu", "bf16").run_network(x)
    rel = float(((a - a.mean()) - (b - b.mean())).norm() / (a - a.mean()).norm())
    assert 0 < rel < 0.01


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="this CPU has no native bf16")
def test_bf16_stays_within_the_precision_budget_with_the_default_model() -> None:
    """<1 % relative L2 and 99 % of 8-bit pixels within 2 DN of fp32, on real imagery.

    Random weights give near-constant outputs whose colour match (division by their tiny
    std) magnifies any rounding, so the end-to-end budget is checked on trained weights.
    """
    from backend.weights import WeightsError, default_weights_path, load_weights

    try:
        loaded = load_weights(default_weights_path(4))
    except WeightsError as exc:
        pytest.skip(str(exc))
    lr = _image(48, 64)
    fp32 = SuperResolver(loaded.model, 4, "cpu", "fp32").super_resolve(lr)
    bf16 = SuperResolver(loaded.model, 4, "cpu", "bf16").super_resolve(lr)
    rel = np.linalg.norm(bf16 - fp32) / np.linalg.norm(fp32)
    dn = np.abs(np.round(bf16 * 255) - np.round(fp32 * 255))
    assert rel < 0.01
    assert np.quantile(dn, 0.99) <= 2


def test_auto_precision_falls_back_to_fp32_past_the_budget(tiny_model, monkeypatch) -> None:
    import backend.inference as inference

    if not cpu_has_fast_bf16():
        pytest.skip("this CPU has no native bf16")
    monkeypatch.setattr(inference, "AUTO_PRECISION_TOLERANCE", 0.0)
    resolver = SuperResolver(tiny_model, 4, "cpu", "auto")
    assert resolver.precision == "fp32"
    assert resolver.probe_error is not None and resolver.probe_error > 0


def test_auto_precision_and_device_errors(tiny_model) -> None:
    auto = SuperResolver(tiny_model, 4, "auto", "auto")
    assert auto.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if auto.device.type == "cpu":
        # Without native bf16, auto runs fp32 in a CPU runtime (int8 after calibration).
        assert auto.precision == ("bf16" if cpu_has_fast_bf16() else "fp32")
        runtime = "" if auto.runtime == "torch" else f"{auto.runtime} "
        assert auto.description == f"cpu ({cpu_info().isa}), {runtime}{auto.precision}"
    with pytest.raises(InferenceError, match="unknown precision"):
        SuperResolver(tiny_model, 4, "cpu", "int4")
    with pytest.raises(InferenceError, match="fp16 is not supported on the CPU"):
        SuperResolver(tiny_model, 4, "cpu", "fp16")
    with pytest.raises(InferenceError, match="unsupported device|unknown device"):
        SuperResolver(tiny_model, 4, "tpu", "fp32")
    if not torch.cuda.is_available():
        with pytest.raises(InferenceError, match="no CUDA GPU"):
            SuperResolver(tiny_model, 4, "cuda", "auto")
    with pytest.raises(InferenceError, match="HxWx3"):
        SuperResolver(tiny_model, 4, "cpu", "fp32").super_resolve(np.zeros((8, 8)))


def test_colour_match_follows_the_weight_file(tmp_path, tiny_model) -> None:
    """A model trained to output the image itself records color_match=false."""
    from backend.weights import load_weights, save_safetensors

    lr = _image(16, 16)
    path = save_safetensors(tiny_model, tmp_path / "direct.safetensors", 4, color_match=False)
    direct = SuperResolver.from_weights(load_weights(path), "cpu", "fp32")
    assert not direct.color_match
    x = torch.from_numpy(lr.transpose(2, 0, 1).copy())[None] * 2 - 1
    sr, _ = direct.restore(direct.upsample(x), 256)
    expected = (sr / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.abs(direct.super_resolve(lr) - expected).max() < 1e-6
    matched = SuperResolver.from_weights(
        load_weights(save_safetensors(tiny_model, tmp_path / "m.safetensors", 4)), "cpu", "fp32"
    )
    assert matched.color_match
    assert not np.allclose(matched.super_resolve(lr), expected, atol=1e-3)
