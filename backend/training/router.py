"""Training the router: the degradation estimator that predicts which mixture of the
experts serves a raster best (:class:`~backend.model.degradation_estimator.EstimatorConfig`
``mixtures``).

A classifier names a crop's regime; the engine then mixes the experts by its
probabilities. That is the right mixture only when each expert is best on its own regime
and the probabilities are calibrated on the user's imagery. Measured on the held-out
training files with the x4 experts, neither holds: area reduction (a "clean" product)
gains +0.84 dB over bicubic with 0.7 clean + 0.3 aliased and +0.67 dB with the clean
expert alone, and an expert used where it is wrong costs from 0.1 dB to 2.5 dB. The
router learns those numbers instead. Its labels are the experts' own results: for every
training crop, the PSNR-Y gain over bicubic of each candidate mixture, computed by
running the mixed networks as the engine runs them. Its input is the LR crop alone.

The crops' LR images come from every regime's synthesis and from the full sensor
distribution (:mod:`backend.training.sensor_degradation`). A share of the HR crops is
first blurred slightly and the blurred crop is the reference: natively soft imagery
(resampled products, soft optics), where a cleanly reduced LR image looks like a blurred
one, yet the sharpening expert overshoots the reference. The router so learns the
trade-off between the two from the data rather than from a hand-set prior.

Labels are the expensive part (one network run per crop and candidate); they are
computed in chunks, each saved as it completes, so an interrupted run resumes. The
router's features start from the classifier's (same network), and only a short
training follows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from backend.degradation import blur, gaussian_psf
from backend.inference import SuperResolver
from backend.metrics import rgb_to_y
from backend.model.degradation_estimator import DegradationEstimator
from backend.model.lr_consistency import enlarge
from backend.regimes import CROP_SIDE, Mixture
from backend.training.blur_kernels import uniform
from backend.training.data import RasterCropDataset, find_rasters, stable_split
from backend.training.estimator import fit
from backend.training.sensor_degradation import REGIMES, SensorDegradation
from backend.weights import LoadedWeights

PAIR_WEIGHTS = (0.3, 0.5, 0.7)
"""Weights of the first regime in the two-expert candidates (multiples of the engine's
mixture step, so a candidate is exactly the network the engine builds)."""

NATIVE_SOFT = 0.3
"""Default share of HR crops blurred before reduction (natively soft imagery); the label
cache names other shares, so crops of different shares never mix."""


def candidate_mixtures(
    names: tuple[str, ...], weights: tuple[float, ...] = PAIR_WEIGHTS
) -> tuple[Mixture, ...]:
    """Each expert alone, then every pair of experts at each of ``weights``."""
    out: list[Mixture] = [((n, 1.0),) for n in names]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            out += [tuple(sorted(((a, w), (b, round(1 - w, 6))))) for w in weights]
    return tuple(out)


@dataclass(frozen=True)
class RouterSettings:
    crop: int = CROP_SIDE  # LR pixels a side, as the engine's crops
    train_crops: int = 2000
    val_crops: int = 300
    chunk: int = 100  # crops per saved chunk of labels
    batch: int = 16  # crops per network run
    native_soft_prob: float = NATIVE_SOFT
    native_sigma: tuple[float, float] = (0.5, 1.5)  # HR pixels
    colour_augment: float = 0.0  # share of HR crops recoloured (training data's recolour)
    border: int = 4  # LR pixels left out of each crop's PSNR (the crop's own edge)
    max_gain: float = 4.0  # dB; labels clipped (flat crops give extreme ratios)
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 2031
    val_fraction: float = 0.1


SOURCES = ("clean", "soft", "aliased", "mixed")
"""The LR syntheses of the router's crops, in turn: each regime's, then the full sensor
distribution (blur, reductions, noise and JPEG drawn independently)."""


def _degraders(scale: int) -> list[SensorDegradation]:
    return [SensorDegradation(scale, REGIMES.get(name)) for name in SOURCES]


def crop_gains(
    resolvers: list[SuperResolver], hr: torch.Tensor, lr: torch.Tensor, scale: int, border: int
) -> torch.Tensor:
    """HR [B, 3, sH, sW] and LR [B, 3, H, W] in [0, 1] -> [B, candidates] PSNR-Y gains (dB)
    of each resolver's output over bicubic, ``border`` LR pixels left out."""
    b = border * scale
    y_hr = rgb_to_y(hr)[..., b:-b, b:-b]

    def mse(out: torch.Tensor) -> torch.Tensor:
        return (rgb_to_y(out)[..., b:-b, b:-b] - y_hr).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)

    base = mse(enlarge(lr, scale).clamp(0, 1))
    up = resolvers[0].upsample(lr * 2 - 1)  # the same network input for every candidate
    gains = []
    for resolver in resolvers:
        with torch.no_grad():
            sr = resolver.restore(up)[0].float().cpu()
        gains.append(10 * torch.log10(base / mse((sr / 2 + 0.5).clamp(0, 1))))
    return torch.stack(gains, dim=1)


def labelled_chunk(
    paths: list[Path],
    resolvers: list[SuperResolver],
    scale: int,
    start: int,
    count: int,
    settings: RouterSettings,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops ``start .. start+count`` of the seeded sequence: LR [N, 3, c, c] in [-1, 1]
    and their candidates' gains [N, M]. Item i is a pure function of (seed, i)."""
    source = RasterCropDataset(
        paths,
        settings.crop * scale,
        seed=seed + scale,
        sampling="sqrt-area",
        colour_augment=settings.colour_augment,
    )
    degraders = _degraders(scale)
    hrs, lrs = [], []
    for i in range(start, start + count):
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        hr = source[i][None].float()
        if uniform(g, 0, 1) < settings.native_soft_prob:
            hr = blur(hr, gaussian_psf(uniform(g, *settings.native_sigma))).clamp(0, 1)
        hrs.append(hr)
        lrs.append(degraders[i % len(degraders)](hr, g))
    xs, ys = [], []
    for k in range(0, count, settings.batch):
        hr, lr = torch.cat(hrs[k : k + settings.batch]), torch.cat(lrs[k : k + settings.batch])
        ys.append(crop_gains(resolvers, hr, lr, scale, settings.border))
        xs.append(lr * 2 - 1)
    return torch.cat(xs), torch.cat(ys).clamp(-settings.max_gain, settings.max_gain)


def labelled_crops(
    paths: list[Path],
    resolvers: list[SuperResolver],
    scale: int,
    count: int,
    settings: RouterSettings,
    seed: int,
    cache: Path,
    log: Callable[[str], None] = print,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``count`` crops, chunk by chunk; each chunk is read from ``cache`` if an earlier
    run saved it, else computed and saved (safetensors: no pickle)."""
    from safetensors.torch import load_file, save_file

    cache.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for start in range(0, count, settings.chunk):
        n = min(settings.chunk, count - start)
        variant = f"_soft{settings.native_soft_prob:g}" if settings.native_soft_prob != NATIVE_SOFT else ""
        variant += f"_colour{settings.colour_augment:g}" if settings.colour_augment else ""
        path = cache / f"x{scale}_crop{settings.crop}{variant}_seed{seed}_{start:06d}_{n}.safetensors"
        if path.is_file():
            saved = load_file(str(path))
            x, y = saved["lr"], saved["gains"]
        else:
            t0 = time.perf_counter()
            x, y = labelled_chunk(paths, resolvers, scale, start, n, settings, seed)
            tmp = path.with_suffix(".tmp")
            save_file({"lr": x.contiguous(), "gains": y.contiguous()}, str(tmp))
            tmp.replace(path)  # a chunk is there whole or not at all
            log(f"crops {start}-{start + n} of {count} labelled in {time.perf_counter() - t0:.0f} s")
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def _centred(t: torch.Tensor) -> torch.Tensor:
    return t - t.mean(dim=1, keepdim=True)


def choice_report(predicted: torch.Tensor, gains: torch.Tensor, names: list[str]) -> dict[str, object]:
    """Per-crop decisions on held-out crops: mean gain of the router's choice, of the
    best candidate (the oracle) and of each candidate always."""
    chosen = gains.gather(1, predicted.argmax(1, keepdim=True))[:, 0]
    return {
        "chosen_gain_db": round(float(chosen.mean()), 3),
        "oracle_gain_db": round(float(gains.max(1).values.mean()), 3),
        "always_db": {n: round(float(g), 3) for n, g in zip(names, gains.mean(0), strict=True)},
    }


def train_router(
    data: Path,
    weights: LoadedWeights,
    settings: RouterSettings,
    cache: Path,
    log: Callable[[str], None] = print,
) -> tuple[DegradationEstimator, dict[str, object]]:
    """Label crops of ``data``'s training split with the experts of ``weights`` and train
    a router starting from the file's classifier; returns it and a summary."""
    experts = weights.experts
    if experts is None:
        raise SystemExit("error: the router needs a degradation-aware weights file (finalize --expert)")
    t0 = time.perf_counter()
    torch.manual_seed(settings.seed)
    mixtures = candidate_mixtures(experts.names)
    base = SuperResolver.from_weights(weights, "cpu", "auto")
    resolvers = [base.for_regime(m) for m in mixtures]  # the list keeps every one built
    scale = weights.scale
    train_files, held_out = stable_split(find_rasters([data]), settings.val_fraction, settings.seed)
    seed = settings.seed
    x, y = labelled_crops(train_files, resolvers, scale, settings.train_crops, settings, seed, cache, log)
    vx, vy = labelled_crops(held_out, resolvers, scale, settings.val_crops, settings, seed + 1, cache, log)
    classifier = experts.estimator
    model = DegradationEstimator(replace(classifier.config, mixtures=mixtures))
    features = {k: v for k, v in classifier.state_dict().items() if not k.startswith("head.")}
    model.load_state_dict(features, strict=False)
    names = list(model.config.outputs)

    def report(epoch: int, loss: float) -> None:
        if (epoch + 1) % 10 == 0 or epoch + 1 == settings.epochs:
            model.eval()
            with torch.inference_mode():
                held = choice_report(model(vx), vy, names)
            log(f"epoch {epoch + 1}: loss {loss:.3f}, held-out {json.dumps(held)}")

    def centred_mse(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(_centred(predicted), target)

    target = _centred(y)  # only the differences between candidates decide
    st = settings
    fit(model, x, target, centred_mse, st.epochs, st.batch_size, st.lr, st.seed, report)
    model.eval()
    with torch.inference_mode():
        held = choice_report(model(vx), vy, names)
        before = classifier(vx)
    index = {m: i for i, m in enumerate(mixtures)}
    if classifier.config.mixtures:  # the file already had a router: its choices, for comparison
        # (a router's candidates are the mixtures of its file's experts, as these)
        earlier = torch.tensor([index[classifier.config.mixtures[int(c)]] for c in before.argmax(1)])
        held["previous_router_choice_gain_db"] = round(float(vy.gather(1, earlier[:, None]).mean()), 3)
    else:  # a classifier: its most probable expert alone
        regimes = classifier.config.regimes
        as_classifier = torch.tensor([index[((regimes[int(c)], 1.0),)] for c in before.argmax(1)])
        held["classifier_choice_gain_db"] = round(float(vy.gather(1, as_classifier[:, None]).mean()), 3)
    summary: dict[str, object] = {
        "kind": "router",
        "held_out_crops": held,
        "crops": len(x),
        "crop": settings.crop,
        "scale": scale,
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("chunk", "batch")},
        "minutes": round((time.perf_counter() - t0) / 60, 1),
    }
    return model.eval().requires_grad_(False), summary
