"""Training the degradation estimator (:mod:`backend.model.degradation_estimator`).

Labels come for free: each training crop is degraded by one regime's LR synthesis
(:data:`backend.training.sensor_degradation.REGIMES`, the same ones the experts learn
from), at x4 or x8, and the estimator learns to name the regime from the LR crop alone.
The crops are drawn once (a fixed, seeded set: the synthesis, not the small network,
is the expensive part) from the training files of the split the experts used, so the
held-out files stay unseen; accuracy is reported on crops from those held-out files.
One run takes minutes on a CPU and is not resumed: it is short enough to repeat.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from backend.model.degradation_estimator import DegradationEstimator, EstimatorConfig
from backend.training.data import RasterCropDataset, find_rasters, stable_split
from backend.training.sensor_degradation import REGIMES, SensorDegradation

REGIME_NAMES = ("clean", "soft", "aliased")


@dataclass(frozen=True)
class EstimatorSettings:
    crop: int = 48  # LR pixels a side
    scales: tuple[int, ...] = (4, 8)
    train_crops: int = 4800
    val_crops: int = 600
    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 2031
    val_fraction: float = 0.1


def labelled_crops(
    paths: list[Path], count: int, settings: EstimatorSettings, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` LR crops [N, 3, crop, crop] in [-1, 1] and their regime indexes, the
    regimes and scales in turn (balanced), every random number from ``seed``."""
    degraders = {
        (name, s): SensorDegradation(s, REGIMES[name]) for name in REGIME_NAMES for s in settings.scales
    }
    sources = {
        s: RasterCropDataset(paths, settings.crop * s, seed=seed + s, sampling="sqrt-area")
        for s in settings.scales
    }
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for i in range(count):
        label = i % len(REGIME_NAMES)
        s = settings.scales[(i // len(REGIME_NAMES)) % len(settings.scales)]
        hr = sources[s][i][None]
        xs.append(degraders[(REGIME_NAMES[label], s)](hr, g)[0] * 2 - 1)
        ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


def fit(
    model: DegradationEstimator,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    after_epoch: Callable[[int, float], None],
) -> None:
    """Train ``model`` on crops ``x`` [N, 3, h, w] and targets ``y`` (AdamW, one-cycle rate,
    each batch at a random quarter turn: degradations have no orientation), calling
    ``after_epoch(epoch, mean loss)``; every random number from ``seed``."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * math.ceil(len(x) / batch_size))
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            k = int(torch.randint(0, 4, (), generator=g))
            loss = loss_fn(model(torch.rot90(x[idx], k, (2, 3))), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        after_epoch(epoch, total / len(x))


def accuracy(model: DegradationEstimator, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        logits = torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)])
    return float((logits.argmax(1) == y).float().mean())


def train_estimator(
    data: Path, settings: EstimatorSettings, log: Callable[[str], None] = print
) -> tuple[DegradationEstimator, dict[str, object]]:
    """Train on ``data``'s training split (``settings.seed``); returns the estimator and a
    summary (accuracies on the held-out files' crops, overall and per regime)."""
    t0 = time.perf_counter()
    torch.manual_seed(settings.seed)
    train_files, held_out = stable_split(find_rasters([data]), settings.val_fraction, settings.seed)
    x, y = labelled_crops(train_files, settings.train_crops, settings, settings.seed)
    vx, vy = labelled_crops(held_out, settings.val_crops, settings, settings.seed + 1)
    log(f"{len(x)} training and {len(vx)} held-out crops drawn in {time.perf_counter() - t0:.0f} s")
    model = DegradationEstimator(EstimatorConfig(regimes=REGIME_NAMES))

    def report(epoch: int, loss: float) -> None:
        model.eval()
        log(f"epoch {epoch + 1}: loss {loss:.3f}, held-out accuracy {accuracy(model, vx, vy):.3f}")

    st = settings
    fit(model, x, y, F.cross_entropy, st.epochs, st.batch_size, st.lr, st.seed, report)
    per_regime = {
        name: round(accuracy(model, vx[vy == k], vy[vy == k]), 3) for k, name in enumerate(REGIME_NAMES)
    }
    summary: dict[str, object] = {
        "held_out_crop_accuracy": round(accuracy(model, vx, vy), 3),
        "per_regime": per_regime,
        "crops": len(x),
        "crop": settings.crop,
        "scales": list(settings.scales),
        "seed": settings.seed,
        "minutes": round((time.perf_counter() - t0) / 60, 1),
    }
    return model.eval().requires_grad_(False), summary
