"""The degradation estimator: which kind of low-resolution image a raster is.

A network trained on one degradation does well on it and poorly on others (measured on
held-out training rasters with the bundled x4 network: +1.36 dB PSNR-Y over bicubic on
antialiased reductions, +0.21 dB on blurred, noisy sensor products, -2.55 dB on
point-sampled ones), and one blind network trained on all of them trades one for another.
A raster has one degradation, the same everywhere in it: its sensor's blur, its
resampling, its compression. So the model estimates it once per raster, from a few crops
at the raster's own resolution, and runs the expert networks' weights mixed by the
estimate (:mod:`backend.regimes`), at the speed of one network.

The estimator is a small CNN on low-resolution crops in [-1, 1]: full-resolution
convolutions first (blur, aliasing, noise and JPEG blocks live in the finest pixels), one
strided stage, then mean and max pooling, so the sharpest edges of a crop (which show its
point-spread function best) count as much as its average texture. Per raster, the
crops' log-probabilities are averaged (:meth:`DegradationEstimator.estimate`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn


@dataclass(frozen=True)
class EstimatorConfig:
    """The estimator's shape; stored as JSON in the weights' metadata."""

    regimes: tuple[str, ...] = ("clean", "soft", "aliased")
    channels: int = 32
    fine_layers: int = 4  # 3x3 convolutions at the crop's resolution

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> EstimatorConfig:
        regimes = data.get("regimes", cls.regimes)
        if not isinstance(regimes, list | tuple) or not all(isinstance(r, str) for r in regimes):
            raise ValueError("'regimes' must be a list of names")
        if not regimes:
            raise ValueError("'regimes' is empty")
        channels, layers = data["channels"], data["fine_layers"]
        if not isinstance(channels, int) or not isinstance(layers, int) or channels < 1 or layers < 1:
            raise ValueError("'channels' and 'fine_layers' must be positive integers")
        return cls(regimes=tuple(regimes), channels=channels, fine_layers=layers)


class DegradationEstimator(nn.Module):
    """LR crops [B, 3, h, w] in [-1, 1] -> logits [B, regimes]."""

    def __init__(self, config: EstimatorConfig | None = None) -> None:
        super().__init__()
        self.config = config or EstimatorConfig()
        c = self.config.channels
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, padding=1), nn.ReLU()]
        for _ in range(self.config.fine_layers - 1):
            layers += [nn.Conv2d(c, c, 3, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(4 * c, len(self.config.regimes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)

    def restricted(self, regimes: tuple[str, ...]) -> DegradationEstimator:
        """The same estimator over a subset of its regimes (their rows of the head): its
        probabilities are this one's given that the raster is one of ``regimes``. For a
        file that ships experts for only some of the regimes the estimator knows."""
        unknown = set(regimes) - set(self.config.regimes)
        if unknown or not regimes:
            raise ValueError(f"regimes {regimes} are not a subset of {self.config.regimes}")
        rows = [self.config.regimes.index(r) for r in regimes]
        out = DegradationEstimator(replace(self.config, regimes=tuple(regimes)))
        state = self.state_dict()
        state["head.weight"], state["head.bias"] = state["head.weight"][rows], state["head.bias"][rows]
        out.load_state_dict(state)
        return out.eval().requires_grad_(False)

    @torch.inference_mode()
    def estimate(self, crops: torch.Tensor) -> dict[str, float]:
        """Crops of one raster [K, 3, h, w] in [-1, 1] -> the probability of each regime:
        the softmax of the crops' mean log-probability (a product of the crops' evidence)."""
        if crops.ndim != 4 or crops.shape[0] == 0:
            raise ValueError("expected a non-empty batch of crops [K, 3, h, w]")
        logp = torch.log_softmax(self.forward(crops.float()), dim=1).mean(dim=0)
        p = torch.softmax(logp, dim=0)
        return {name: float(v) for name, v in zip(self.config.regimes, p, strict=True)}
