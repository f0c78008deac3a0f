"""Degradation-aware weights: expert networks per LR regime, mixed per raster.

A weights file may carry, besides its network, the weights of the same network trained
for other regimes of low-resolution imagery (``regime.<name>.<tensor>``) and a
:class:`~backend.model.degradation_estimator.DegradationEstimator` (``estimator.<tensor>``).
The experts are fine-tuned from one network, so their weights lie close together and a
weighted mean of them is a network between them (as model soups); the estimator gives
the weights: a classifier's probabilities for the raster, or the candidate mixture a
router predicts to gain most (:mod:`backend.model.degradation_estimator`). The mixed
network has the size and speed of one expert, and one mixture serves every tile of a
raster, so the tiles agree.

Probabilities are rounded to :data:`MIXTURE_STEP` (an estimate that moves by a hair
between two rasters gives the same network, which then need not be built again), and
a regime under half a step is left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from backend.model.degradation_estimator import DegradationEstimator

MIXTURE_STEP = 0.1
CROP_SIDE = 64
"""Side of the estimator's crops, in input pixels: a few edges and textures each."""
CROP_GRID = 4
"""Crops per raster side (at most CROP_GRID^2 crops), on a fixed grid over the raster."""

Mixture = tuple[tuple[str, float], ...]
"""Regime name -> weight, sorted by name, weights multiples of MIXTURE_STEP summing to 1."""


def round_mixture(probabilities: Mapping[str, float], step: float = MIXTURE_STEP) -> Mixture:
    """Probabilities -> a :data:`Mixture`: multiples of ``step`` summing to 1 (largest
    remainders get the spare steps), regimes rounded to 0 left out."""
    if not probabilities:
        raise ValueError("no regime probabilities")
    total = sum(max(0.0, p) for p in probabilities.values()) or 1.0
    steps = round(1 / step)
    exact = {k: max(0.0, p) / total * steps for k, p in probabilities.items()}
    units = {k: math.floor(v) for k, v in exact.items()}
    spare = steps - sum(units.values())
    for k in sorted(exact, key=lambda k: units[k] - exact[k])[:spare]:
        units[k] += 1
    return tuple(sorted((k, round(n / steps, 6)) for k, n in units.items() if n))


def describe_mixture(mixture: Mixture) -> str:
    """'for soft imagery (soft 0.8, clean 0.2)': the main regime, then every weight."""
    ordered = sorted(mixture, key=lambda kv: -kv[1])
    return f"for {ordered[0][0]} imagery ({', '.join(f'{k} {w:.1f}' for k, w in ordered)})"


def crop_positions(
    height: int, width: int, side: int = CROP_SIDE, grid: int = CROP_GRID
) -> list[tuple[int, int, int]]:
    """(row, col, side) of the estimator's crops on a raster of ``height`` x ``width``
    input pixels: the centres of a grid of at most ``grid`` x ``grid`` cells, fewer on a
    small raster; one crop of the largest square that fits when the raster is smaller than
    ``side``. Depends on the raster's size only (never on the tiling)."""
    s = min(side, height, width)
    rows = max(1, min(grid, height // s))
    cols = max(1, min(grid, width // s))
    out = []
    for i in range(rows):
        for j in range(cols):
            r = int((i + 0.5) * height / rows - s / 2)
            c = int((j + 0.5) * width / cols - s / 2)
            out.append((min(max(r, 0), height - s), min(max(c, 0), width - s), s))
    return out


def image_crops(lr: torch.Tensor) -> torch.Tensor:
    """An image [1, 3, H, W] in [0, 1] -> the estimator's crops [K, 3, s, s] in [0, 1]."""
    h, w = lr.shape[-2:]
    return torch.cat([lr[:, :, r : r + s, c : c + s] for r, c, s in crop_positions(h, w)])


@dataclass
class RegimeExperts:
    """The experts' weights (``states``: regime -> state dict, the file's own network under
    ``names[0]``) and the estimator that picks their mixture."""

    names: tuple[str, ...]
    states: dict[str, dict[str, torch.Tensor]]
    estimator: DegradationEstimator

    def estimate(self, crops: torch.Tensor | np.ndarray) -> Mixture:
        """Crops [K, 3, h, w] in [0, 1] of one raster -> its rounded mixture."""
        x = torch.as_tensor(np.asarray(crops, dtype=np.float32)) if isinstance(crops, np.ndarray) else crops
        probabilities = self.estimator.estimate(x.float().clamp(0, 1) * 2 - 1)
        return round_mixture({k: probabilities.get(k, 0.0) for k in self.names})

    def mix(self, mixture: Mixture) -> dict[str, torch.Tensor]:
        """The weighted mean of the experts' floating-point tensors (others: the first's)."""
        weights = dict(mixture)
        unknown = set(weights) - set(self.names)
        if unknown:
            known = ", ".join(self.names)
            raise ValueError(f"unknown regime(s) {', '.join(sorted(unknown))}; known: {known}")
        base = self.states[self.names[0]]
        out = {}
        for key, tensor in base.items():
            if not tensor.is_floating_point():
                out[key] = tensor.clone()
                continue
            acc = torch.zeros_like(tensor, dtype=torch.float64)
            for name, w in weights.items():
                acc += w * self.states[name][key].double()
            out[key] = acc.to(tensor.dtype)
        return out
