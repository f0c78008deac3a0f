"""The router: a degradation estimator that predicts each candidate mixture's PSNR gain
and picks the best for the raster (backend.training.router, EstimatorConfig.mixtures)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from backend.default_model import initial_student
from backend.inference import SuperResolver
from backend.model import SlimDiffSRStudent
from backend.model.degradation_estimator import DegradationEstimator, EstimatorConfig
from backend.regimes import RegimeExperts, round_mixture
from backend.training.router import RouterSettings, candidate_mixtures, crop_gains, labelled_crops
from backend.weights import load_weights, save_safetensors
from devtools.compact import NANO

NAMES = ("clean", "soft", "aliased")


def _router(seed: int = 0, names: tuple[str, ...] = NAMES) -> DegradationEstimator:
    torch.manual_seed(seed)
    config = EstimatorConfig(regimes=names, channels=8, fine_layers=2, mixtures=candidate_mixtures(names))
    return DegradationEstimator(config).eval()


def test_candidates_are_networks_the_engine_builds() -> None:
    """Every candidate is a mixture the engine's rounding leaves as it is (else the router
    would pick one network and the engine run another)."""
    three = candidate_mixtures(NAMES)
    assert len(three) == 3 + 3 * 3 and len(set(three)) == len(three)
    assert three[:3] == ((("clean", 1.0),), (("soft", 1.0),), (("aliased", 1.0),))
    for mixture in three:
        assert round_mixture(dict(mixture)) == mixture
    assert len(candidate_mixtures(("clean", "aliased"))) == 2 + 3


def test_router_config_round_trips_and_refuses_bad_mixtures() -> None:
    config = _router().config
    assert EstimatorConfig.from_dict(config.to_dict()) == config
    assert "mixtures" not in EstimatorConfig().to_dict()  # classifier files unchanged
    bad = [
        [[["clean", 0.5], ["soft", 0.4]]],  # does not sum to 1
        [[["hazy", 1.0]]],  # unknown regime
        [[["clean", 1.5]]],  # weight out of range
        "clean",
    ]
    for mixtures in bad:
        with pytest.raises(ValueError):
            EstimatorConfig.from_dict({**config.to_dict(), "mixtures": mixtures})


def test_router_picks_the_candidate_with_the_highest_mean_predicted_gain() -> None:
    router = _router(1)
    crops = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        best = int(router(crops).mean(dim=0).argmax())
    expected = dict(router.config.mixtures[best])
    assert router.estimate(crops) == {n: expected.get(n, 0.0) for n in NAMES}
    # The head's bias alone decides when its weights are zero.
    with torch.no_grad():
        router.head.weight.zero_()
        router.head.bias.copy_(torch.arange(12.0) % 7)  # candidate 6: aliased 0.7 + clean 0.3
    assert router.estimate(crops) == {"clean": 0.3, "soft": 0.0, "aliased": 0.7}


def test_router_restricted_keeps_the_candidates_of_those_experts_and_prior_shifts_by_weight() -> None:
    router = _router(3)
    crops = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        full = router(crops)
    two = router.restricted(("clean", "aliased"))
    kept = [i for i, m in enumerate(router.config.mixtures) if "soft" not in dict(m)]
    assert two.config.mixtures == tuple(router.config.mixtures[i] for i in kept) and len(kept) == 5
    with torch.no_grad():
        assert torch.allclose(two(crops), full[:, kept])
    shifted = router.with_prior({"soft": -1.0})
    soft_weight = torch.tensor([dict(m).get("soft", 0.0) for m in router.config.mixtures])
    with torch.no_grad():
        assert torch.allclose(shifted(crops) - full, -soft_weight.expand(3, -1), atol=1e-5)
    with pytest.raises(ValueError, match="unknown regime"):
        router.with_prior({"hazy": 1.0})


def test_a_file_with_a_router_loads_and_estimates_one_of_its_candidates(tmp_path: Path) -> None:
    torch.manual_seed(5)
    nets = {n: SlimDiffSRStudent(NANO) for n in NAMES}
    experts = RegimeExperts(NAMES, {n: m.state_dict() for n, m in nets.items()}, _router(6))
    path = save_safetensors(nets["clean"], tmp_path / "routed_x4.safetensors", 4, experts=experts)
    loaded = load_weights(path)
    assert loaded.experts is not None
    assert loaded.experts.estimator.config.mixtures == candidate_mixtures(NAMES)
    resolver = SuperResolver.from_weights(loaded, "cpu", "fp32")
    mixture = resolver.estimate_regime(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(7)))
    assert mixture in candidate_mixtures(NAMES)


def test_crop_gains_measure_psnr_over_bicubic() -> None:
    """The untrained compact student outputs the bicubic image: its gain is zero, on any
    crop; a real gain needs a network that differs from bicubic."""
    student = SuperResolver(initial_student(), 4, "cpu", "fp32", color_match=False)
    hr = torch.rand(3, 3, 96, 96, generator=torch.Generator().manual_seed(8))
    hr = torch.nn.functional.avg_pool2d(hr, 3, 1, 1)  # some spatial correlation
    lr = torch.nn.functional.interpolate(hr, scale_factor=0.25, mode="area")
    gains = crop_gains([student, student], hr, lr, 4, border=2)
    assert gains.shape == (3, 2) and gains.abs().max() < 0.01


@pytest.mark.slow
def test_router_labels_resume_from_their_chunks_and_training_packs_with_the_experts(
    shared_data: Path, tmp_path: Path
) -> None:
    from backend.default_model import finalize, load_estimator, save_estimator
    from backend.training.data import find_rasters
    from backend.training.router import train_router

    torch.manual_seed(9)
    runs = {
        n: save_safetensors(
            SlimDiffSRStudent(NANO), tmp_path / f"{n}_x4.safetensors", 4, training={"complete": True}
        )
        for n in NAMES
    }
    classifier = tmp_path / "classifier.safetensors"
    save_estimator(
        DegradationEstimator(EstimatorConfig(channels=8, fine_layers=2)), classifier, {"kind": "test"}
    )
    experts_file = finalize(
        runs["clean"],
        tmp_path / "three_x4.safetensors",
        False,
        {"soft": runs["soft"], "aliased": runs["aliased"]},
        classifier,
    )
    loaded = load_weights(experts_file)
    settings = RouterSettings(
        crop=16, train_crops=24, val_crops=12, chunk=12, batch=6, epochs=2, batch_size=8
    )
    resolvers = [
        SuperResolver.from_weights(loaded, "cpu", "fp32").for_regime(m) for m in candidate_mixtures(NAMES)
    ]
    files = find_rasters([shared_data / "train"])[:6]
    said: list[str] = []
    x, y = labelled_crops(files, resolvers, 4, 24, settings, 11, tmp_path / "cache", said.append)
    assert x.shape == (24, 3, 16, 16) and y.shape == (24, 12) and len(said) == 2
    assert y.abs().max() <= settings.max_gain and x.min() >= -1 and x.max() <= 1
    again = labelled_crops(files, resolvers, 4, 24, settings, 11, tmp_path / "cache", said.append)
    assert len(said) == 2 and torch.equal(again[0], x) and torch.equal(again[1], y)  # read, not recomputed
    # another crop size (x8 routers use smaller ones) labels its own chunks, never the cached ones
    small = labelled_crops(
        files, resolvers, 4, 12, replace(settings, crop=12), 11, tmp_path / "cache", said.append
    )
    assert len(said) == 3 and small[0].shape == (12, 3, 12, 12)
    # so does another share of natively soft crops; with none, no HR crop is blurred, so the
    # crops whose draw blurred them differ and the others are the same LR
    sharp = labelled_crops(
        files, resolvers, 4, 12, replace(settings, native_soft_prob=0.0), 11, tmp_path / "cache", said.append
    )
    assert len(said) == 4
    same = [bool(torch.equal(a, b)) for a, b in zip(sharp[0], x[:12], strict=True)]
    assert 0 < sum(same) < 12
    # recoloured HR crops (grey, band order...) label their own chunks too
    coloured = labelled_crops(
        files, resolvers, 4, 12, replace(settings, colour_augment=1.0), 11, tmp_path / "cache", said.append
    )
    assert len(said) == 5 and not torch.equal(coloured[0], x[:12])
    router, summary = train_router(
        shared_data / "train", loaded, settings, tmp_path / "cache2", log=said.append
    )
    held = summary["held_out_crops"]
    assert isinstance(held, dict) and held["oracle_gain_db"] >= held["chosen_gain_db"]
    assert router.config.mixtures == candidate_mixtures(NAMES)
    router_file = save_estimator(router, tmp_path / "router.safetensors", summary)
    assert load_estimator(router_file)[0].config == router.config
    packed = load_weights(
        finalize(
            runs["clean"],
            tmp_path / "routed_x4.safetensors",
            False,
            {"soft": runs["soft"], "aliased": runs["aliased"]},
            router_file,
        )
    )
    assert packed.experts is not None and packed.experts.estimator.config.mixtures == router.config.mixtures
    assert packed.metadata["training"]["estimator"]["kind"] == "router"
    # a routed file trains a new router too (the labels are its experts', so cached), reporting
    # the previous router's choices on the same held-out crops
    _, again = train_router(shared_data / "train", packed, settings, tmp_path / "cache2", log=said.append)
    held_again = again["held_out_crops"]
    assert isinstance(held_again, dict) and "previous_router_choice_gain_db" in held_again
    assert held_again["oracle_gain_db"] >= held_again["previous_router_choice_gain_db"]
