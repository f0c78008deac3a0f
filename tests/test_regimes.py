"""Degradation-aware weights: experts per LR regime mixed per raster (backend.regimes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from backend.engine import UpscaleOptions, upscale_raster
from backend.inference import SuperResolver
from backend.model import SlimDiffSRStudent
from backend.model.degradation_estimator import DegradationEstimator, EstimatorConfig
from backend.regimes import RegimeExperts, crop_positions, image_crops, round_mixture
from backend.weights import WeightsError, load_weights, save_safetensors
from devtools.compact import NANO


def _expert_file(path: Path, seed: int = 0) -> tuple[Path, RegimeExperts]:
    """A nano x4 file with two random experts ('clean' its own network) and a random estimator."""
    torch.manual_seed(seed)
    clean, soft = SlimDiffSRStudent(NANO), SlimDiffSRStudent(NANO)
    estimator = DegradationEstimator(EstimatorConfig(regimes=("clean", "soft"), channels=8, fine_layers=2))
    experts = RegimeExperts(
        ("clean", "soft"), {"clean": clean.state_dict(), "soft": soft.state_dict()}, estimator
    )
    return save_safetensors(clean, path, 4, name="nano experts", color_match=False, experts=experts), experts


@pytest.fixture(scope="module")
def expert_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _expert_file(tmp_path_factory.mktemp("experts") / "experts_x4.safetensors")[0]


def test_round_mixture_gives_steps_that_sum_to_one() -> None:
    m = round_mixture({"clean": 0.62, "soft": 0.33, "aliased": 0.05})
    assert dict(m) == {"clean": 0.6, "soft": 0.3, "aliased": 0.1}
    m = round_mixture({"clean": 0.97, "soft": 0.02, "aliased": 0.01})
    assert m == (("clean", 1.0),)  # regimes under half a step are left out
    for p in ({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, {"a": 0.55, "b": 0.45}):
        m = round_mixture(p)
        assert abs(sum(w for _, w in m) - 1) < 1e-9
        assert all(abs(w * 10 - round(w * 10)) < 1e-9 for _, w in m)


def test_crop_positions_cover_the_raster_and_fit() -> None:
    for h, w in ((1000, 700), (64, 64), (40, 300), (130, 70)):
        crops = crop_positions(h, w)
        assert 1 <= len(crops) <= 16
        for r, c, s in crops:
            assert 0 <= r <= h - s and 0 <= c <= w - s and s == min(64, h, w)
    rows = sorted({r for r, _, _ in crop_positions(1000, 1000)})
    assert len(rows) == 4 and rows[0] < 250 < rows[-1] > 750 - 64  # spread over the whole height


def test_experts_round_trip_through_the_file(expert_file: Path, tmp_path: Path) -> None:
    _, experts = _expert_file(tmp_path / "again_x4.safetensors")
    loaded = load_weights(expert_file)
    assert loaded.experts is not None and loaded.experts.names == ("clean", "soft")
    for name in experts.names:
        for key, value in experts.states[name].items():
            assert torch.equal(loaded.experts.states[name][key], value)
    # a pure mixture is that expert exactly; an even one is the mean
    soft = loaded.experts.mix((("soft", 1.0),))
    half = loaded.experts.mix((("clean", 0.5), ("soft", 0.5)))
    key = next(k for k, v in soft.items() if v.is_floating_point() and v.numel() > 1)
    assert torch.allclose(soft[key], experts.states["soft"][key])
    assert torch.allclose(
        half[key], (experts.states["clean"][key] + experts.states["soft"][key]) / 2, atol=1e-6
    )
    with pytest.raises(ValueError, match="unknown regime"):
        loaded.experts.mix((("aliased", 1.0),))


def test_for_regime_runs_the_mixed_network(expert_file: Path) -> None:
    loaded = load_weights(expert_file)
    base = SuperResolver.from_weights(loaded, "cpu", "fp32")
    soft = base.for_regime((("soft", 1.0),))
    assert soft is not base and soft.regime == (("soft", 1.0),)
    assert base.for_regime((("soft", 1.0),)) is soft  # kept for the next raster
    assert base.for_regime((("clean", 1.0),)) is base  # the file's own network
    assert soft.regime_description == "for soft imagery (soft 1.0)"
    # the same as a resolver built on the soft expert's weights directly
    model = SlimDiffSRStudent(NANO)
    assert loaded.experts is not None
    model.load_state_dict(loaded.experts.states["soft"])
    direct = SuperResolver(model, 4, "cpu", "fp32", color_match=False)
    lr = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(soft.super_resolve(lr), direct.super_resolve(lr), atol=1e-6)
    assert not np.allclose(base.super_resolve(lr), direct.super_resolve(lr), atol=1e-3)


def test_estimate_is_a_mixture_of_the_files_regimes(expert_file: Path) -> None:
    resolver = SuperResolver.from_weights(load_weights(expert_file), "cpu", "fp32")
    crops = image_crops(torch.rand(1, 3, 150, 200, generator=torch.Generator().manual_seed(1)))
    assert crops.shape == (6, 3, 64, 64)  # a 2 x 3 grid of the image
    mixture = resolver.estimate_regime(crops)
    assert mixture is not None and {k for k, _ in mixture} <= {"clean", "soft"}
    assert abs(sum(w for _, w in mixture) - 1) < 1e-9


def test_estimator_restricted_to_some_regimes_gives_their_conditional_probabilities() -> None:
    """A file shipping experts for some regimes only: its estimate is the full estimator's
    given that the raster is one of them."""
    torch.manual_seed(3)
    full = DegradationEstimator(EstimatorConfig(channels=8, fine_layers=2)).eval()
    crops = torch.rand(4, 3, 32, 32) * 2 - 1
    p = full.estimate(crops)
    two = full.restricted(("clean", "aliased"))
    q = two.estimate(crops)
    assert two.config.regimes == ("clean", "aliased") and set(q) == {"clean", "aliased"}
    assert q["aliased"] == pytest.approx(p["aliased"] / (p["clean"] + p["aliased"]), abs=1e-6)
    with pytest.raises(ValueError, match="subset"):
        full.restricted(("clean", "hazy"))


def test_damaged_regime_metadata_is_refused(expert_file: Path, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(expert_file), framework="pt") as f:
        meta = dict(f.metadata())
        state = {k: f.get_tensor(k) for k in f.keys()}
    bad = tmp_path / "bad_x4.safetensors"
    save_file(state, str(bad), metadata={**meta, "regimes": json.dumps(["clean", "blurry"])})
    with pytest.raises(WeightsError, match="regime"):
        load_weights(bad)
    state.pop(next(k for k in state if k.startswith("regime.soft.")))
    save_file(state, str(bad), metadata=meta)
    with pytest.raises(WeightsError, match="does not match"):
        load_weights(bad)


def test_engine_mixes_once_per_raster_whatever_the_tile_size(
    expert_file: Path, rgb_crop, tmp_path: Path
) -> None:
    src, _ = rgb_crop(200)
    outputs, tags = [], []
    for tile in (64, 128):
        out = tmp_path / f"out_{tile}.tif"
        upscale_raster(src, out, expert_file, UpscaleOptions(tile_size=tile, device="cpu", precision="fp32"))
        with rasterio.open(out) as ds:
            outputs.append(ds.read().astype(np.int16))
            tags.append(json.dumps(ds.tags()))
    assert np.abs(outputs[0] - outputs[1]).max() <= 1
    assert "imagery (" in tags[0]  # the provenance names the mixture that ran
    loaded = load_weights(expert_file)
    resolver = SuperResolver.from_weights(loaded, "cpu", "fp32")
    with rasterio.open(src) as ds:
        lr = torch.from_numpy(ds.read().astype(np.float32) / 255)[None]
    expected = resolver.for_regime(resolver.estimate_regime(image_crops(lr))).regime_description
    assert expected.split(" (")[0] in tags[0]
    # A resolver passed in (as the plugin's worker does) keeps the weights' name; the report,
    # the tag and the log name the mixture.
    said: list[str] = []
    out = tmp_path / "out_resolver.tif"
    report = upscale_raster(src, out, resolver, UpscaleOptions(device="cpu"), log=said.append)
    assert report.model == f"nano experts (x4), {expected}"
    with rasterio.open(out) as ds:
        assert report.model in json.dumps(ds.tags())
    assert f"degradation estimate: {expected}" in said


@pytest.mark.slow
def test_estimator_trains_on_labelled_regimes_and_packs_with_experts(
    shared_data: Path, tmp_path: Path
) -> None:
    """The estimator's labelled crops show their regime (soft ones lose fine detail, aliased
    ones keep more of it than clean ones), a short run on the real training files completes
    and reports its held-out accuracy per regime, and finalize packs it with experts into
    one file that the engine's loader reads back. (Learning itself needs thousands of crops,
    minutes: the shipped estimator's accuracy is in its file and test_default_model checks
    its choices.)"""
    from backend.default_model import finalize, load_estimator, save_estimator
    from backend.training.data import find_rasters
    from backend.training.estimator import (
        REGIME_NAMES,
        EstimatorSettings,
        labelled_crops,
        train_estimator,
    )

    settings = EstimatorSettings(crop=32, scales=(4,), train_crops=240, val_crops=60, epochs=4, batch_size=32)
    x, y = labelled_crops(find_rasters([shared_data / "train"])[:8], 60, settings, seed=5)
    assert x.shape == (60, 3, 32, 32) and torch.bincount(y).tolist() == [20, 20, 20]
    detail = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))  # vertical differences
    clean, soft, aliased = (float(detail[y == i].mean()) for i in range(3))
    assert soft < clean < aliased, (soft, clean, aliased)
    model, summary = train_estimator(shared_data / "train", settings, log=lambda _: None)
    assert 0 <= summary["held_out_crop_accuracy"] <= 1 and set(summary["per_regime"]) == set(REGIME_NAMES)
    estimator_file = save_estimator(model, tmp_path / "estimator.safetensors", summary)
    again, again_summary = load_estimator(estimator_file)
    assert again.config.regimes == REGIME_NAMES and again_summary == summary
    runs = {}
    for seed, name in enumerate(REGIME_NAMES):
        torch.manual_seed(seed)
        runs[name] = save_safetensors(
            SlimDiffSRStudent(NANO), tmp_path / f"{name}_x4.safetensors", 4, training={"complete": True}
        )
    packed = finalize(
        runs["clean"],
        tmp_path / "packed_x4.safetensors",
        lr_consistency=False,
        experts={"soft": runs["soft"], "aliased": runs["aliased"]},
        estimator=estimator_file,
    )
    loaded = load_weights(packed)
    assert loaded.experts is not None and loaded.experts.names == REGIME_NAMES
    assert (
        loaded.metadata["training"]["estimator"]["held_out_crop_accuracy"]
        == summary["held_out_crop_accuracy"]
    )
    soft = load_weights(runs["soft"]).model.state_dict()
    assert all(torch.equal(loaded.experts.states["soft"][k], v) for k, v in soft.items())
    with pytest.raises(SystemExit, match="estimator"):
        finalize(runs["clean"], tmp_path / "never_x4.safetensors", experts={"soft": runs["soft"]})
    # A prior shift is the estimator's head bias moved by that many log-odds, recorded.
    experts = {"soft": runs["soft"], "aliased": runs["aliased"]}
    shifted_file = tmp_path / "shifted_x4.safetensors"
    finalize(runs["clean"], shifted_file, False, experts, estimator_file, {"soft": -2})
    shifted = load_weights(shifted_file)
    assert shifted.experts is not None and loaded.experts is not None
    moved = shifted.experts.estimator.head.bias - loaded.experts.estimator.head.bias
    assert torch.allclose(moved, torch.tensor([0.0, -2.0, 0.0]))
    assert shifted.metadata["training"]["estimator"]["prior"] == {"soft": -2.0}
    # Experts for some of the estimator's regimes: the others are left out of its estimate.
    only_aliased = {"aliased": runs["aliased"]}
    two_file = tmp_path / "two_x4.safetensors"
    two = load_weights(finalize(runs["clean"], two_file, False, only_aliased, estimator_file))
    assert two.experts is not None and two.experts.names == ("clean", "aliased")
    assert two.experts.estimator.config.regimes == ("clean", "aliased")
    assert two.metadata["training"]["estimator"]["left_out"] == ["soft"]
    with pytest.raises(SystemExit, match="unknown regime"):
        finalize(runs["clean"], tmp_path / "never.safetensors", False, experts, estimator_file, {"hazy": 1.0})
