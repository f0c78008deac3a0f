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

The same network can instead predict, per crop, the PSNR gain of each of a few candidate
mixtures of the experts (``EstimatorConfig.mixtures``; trained by
:mod:`backend.training.router`): the raster then gets the candidate with the highest
mean predicted gain. A regime's probability is not the best weight to mix by: area
reduction is "clean", yet a little of the aliased expert does better on it, and the
experts' costs where they are wrong differ by dB. Predicting the gains learns those
trade-offs from the experts' own results instead of a hand-set prior.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn


@dataclass(frozen=True)
class EstimatorConfig:
    """The estimator's shape; stored as JSON in the weights' metadata."""

    regimes: tuple[str, ...] = ("clean", "soft", "aliased")
    channels: int = 32
    fine_layers: int = 4  # 3x3 convolutions at the crop's resolution
    # Empty: the head gives each regime's logit (a classifier). Otherwise the candidate
    # mixtures (regime, weight) whose PSNR gains the head predicts (a router).
    mixtures: tuple[tuple[tuple[str, float], ...], ...] = ()

    @property
    def outputs(self) -> tuple[str, ...]:
        """What the head's rows stand for: the regimes, or the candidate mixtures."""
        if not self.mixtures:
            return self.regimes
        return tuple("+".join(f"{k} {w:g}" for k, w in m) for m in self.mixtures)

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        if not self.mixtures:
            out.pop("mixtures")  # classifier files stay as they were
        return out

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
        raw = data.get("mixtures") or ()
        if not isinstance(raw, list | tuple):
            raise ValueError("'mixtures' must be a list of candidate mixtures")
        mixtures = tuple(_mixture(m, tuple(regimes)) for m in raw)
        return cls(regimes=tuple(regimes), channels=channels, fine_layers=layers, mixtures=mixtures)


def _mixture(value: object, regimes: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    """One candidate mixture from JSON ([[regime, weight], ...]), checked."""
    if not isinstance(value, list | tuple) or not value:
        raise ValueError("each of 'mixtures' must be a non-empty list of [regime, weight]")
    pairs = []
    for pair in value:
        if not isinstance(pair, list | tuple) or len(pair) != 2 or pair[0] not in regimes:
            raise ValueError(f"mixture entry {pair!r} is not [one of {list(regimes)}, weight]")
        if not isinstance(pair[1], int | float) or not 0 < pair[1] <= 1:
            raise ValueError(f"mixture weight {pair[1]!r} is not in (0, 1]")
        pairs.append((str(pair[0]), float(pair[1])))
    if abs(sum(w for _, w in pairs) - 1) > 1e-6:
        raise ValueError(f"mixture {value!r} does not sum to 1")
    return tuple(sorted(pairs))


class DegradationEstimator(nn.Module):
    """LR crops [B, 3, h, w] in [-1, 1] -> logits [B, regimes] (a classifier) or predicted
    PSNR gains in dB [B, mixtures] (a router: ``config.mixtures``)."""

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
        self.head = nn.Linear(4 * c, len(self.config.outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)

    def restricted(self, regimes: tuple[str, ...]) -> DegradationEstimator:
        """The same estimator over a subset of its regimes: a classifier keeps their rows
        of the head (its probabilities given that the raster is one of ``regimes``), a
        router the candidate mixtures made of them only. For a file that ships experts
        for only some of the regimes the estimator knows."""
        unknown = set(regimes) - set(self.config.regimes)
        if unknown or not regimes:
            raise ValueError(f"regimes {regimes} are not a subset of {self.config.regimes}")
        if self.config.mixtures:
            keep = [i for i, m in enumerate(self.config.mixtures) if {k for k, _ in m} <= set(regimes)]
            if not keep:
                raise ValueError(f"no candidate mixture is made of {regimes} only")
            mixtures = tuple(self.config.mixtures[i] for i in keep)
            config = replace(self.config, regimes=tuple(regimes), mixtures=mixtures)
        else:
            keep = [self.config.regimes.index(r) for r in regimes]
            config = replace(self.config, regimes=tuple(regimes))
        out = DegradationEstimator(config)
        state = self.state_dict()
        state["head.weight"], state["head.bias"] = state["head.weight"][keep], state["head.bias"][keep]
        out.load_state_dict(state)
        return out.eval().requires_grad_(False)

    def with_prior(self, prior: Mapping[str, float]) -> DegradationEstimator:
        """A copy whose head is shifted per regime: log-odds for a classifier; for a
        router, dB added to each candidate's predicted gain in proportion to the regime's
        weight in it. A regime whose expert is costly where it is wrong can so be made to
        need more evidence."""
        unknown = set(prior) - set(self.config.regimes)
        if unknown:
            raise ValueError(f"prior for unknown regime(s) {', '.join(sorted(unknown))}")
        if self.config.mixtures:
            shift = [sum(w * prior.get(k, 0.0) for k, w in m) for m in self.config.mixtures]
        else:
            shift = [prior.get(r, 0.0) for r in self.config.regimes]
        out = DegradationEstimator(self.config)
        out.load_state_dict(self.state_dict())
        with torch.no_grad():
            out.head.bias.add_(torch.tensor(shift, dtype=out.head.bias.dtype))
        return out.eval().requires_grad_(False)

    @torch.inference_mode()
    def estimate(self, crops: torch.Tensor) -> dict[str, float]:
        """Crops of one raster [K, 3, h, w] in [-1, 1] -> each regime's weight.

        A classifier: the softmax of the crops' mean log-probability (a product of the
        crops' evidence). A router: the weights of the candidate mixture with the highest
        mean predicted gain over the crops (the raster's expected gain, crop by crop)."""
        if crops.ndim != 4 or crops.shape[0] == 0:
            raise ValueError("expected a non-empty batch of crops [K, 3, h, w]")
        out = self.forward(crops.float())
        if self.config.mixtures:
            best = dict(self.config.mixtures[int(out.mean(dim=0).argmax())])
            return {name: best.get(name, 0.0) for name in self.config.regimes}
        logp = torch.log_softmax(out, dim=1).mean(dim=0)
        p = torch.softmax(logp, dim=0)
        return {name: float(v) for name, v in zip(self.config.regimes, p, strict=True)}
