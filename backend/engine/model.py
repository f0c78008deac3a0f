"""The model step: a SuperResolver on batches of windows, with global colour statistics.

The release's colour match maps the network output's per-channel mean/std onto those of
its bicubic input. Computed per tile it would differ from tile to tile (seams), so here
the statistics are estimated ONCE, by running the model on a few windows spread over the
raster before the main pass (nodata excluded), and then applied to every tile. When one
window covers the whole raster those windows are the image itself and the result equals
``SuperResolver.super_resolve`` (see docs/engine.md for the remaining differences).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend.engine.options import EngineError, UpscaleOptions
from backend.engine.radiometry import Radiometry
from backend.inference import ColorStats, InferenceError, SuperResolver
from backend.radiometry import split_range
from backend.weights import LoadedWeights, WeightsError, default_weights_path, load_weights

ModelLike = SuperResolver | LoadedWeights | str | Path | None
Sample = tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]


def resolve_model(model: ModelLike, options: UpscaleOptions) -> tuple[SuperResolver, str]:
    """(SuperResolver, model description) from whatever the caller passed."""
    try:
        if isinstance(model, SuperResolver):
            if options.scale is not None and options.scale != model.scale:
                raise EngineError(
                    f"the model runs at x{model.scale} but x{options.scale} was requested; "
                    f"use scale {model.scale}"
                )
            return model, f"SlimDiffSR student (x{model.scale})"
        if not isinstance(model, LoadedWeights):
            path = model if model is not None else options.weights
            if path is None:
                path = default_weights_path(options.scale or 4)
            model = load_weights(path, scale=options.scale)
        elif options.scale is not None and options.scale != model.scale:
            raise EngineError(
                f"the weights are for x{model.scale} but x{options.scale} was requested; "
                f"use scale {model.scale}"
            )
        return SuperResolver.from_weights(model, options.device, options.precision), model.description
    except (WeightsError, InferenceError) as exc:
        raise EngineError(str(exc)) from None


@dataclass
class _Moments:
    n: float = 0.0
    s: np.ndarray | None = None
    ss: np.ndarray | None = None

    def add(self, x: torch.Tensor, valid: torch.Tensor) -> None:
        """x [3, H, W], valid [H, W] bool."""
        v = x[:, valid].double()
        s, ss = v.sum(dim=1).numpy(), (v * v).sum(dim=1).numpy()
        self.n += float(v.shape[1])
        self.s = s if self.s is None else self.s + s
        self.ss = ss if self.ss is None else self.ss + ss

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased std (as torch.std, which the release uses)."""
        if self.s is None or self.ss is None or self.n < 2:
            raise EngineError("too few valid pixels to estimate colour statistics")
        mean = self.s / self.n
        var = np.maximum(self.ss - self.n * mean * mean, 0.0) / (self.n - 1)
        return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


class ModelStep:
    """Batches of model inputs -> raw SR -> colour match (global stats) -> output bands."""

    def __init__(self, resolver: SuperResolver, radiometry: Radiometry) -> None:
        self.resolver = resolver
        self.radiometry = radiometry
        self.stats: list[ColorStats] = []

    def raw(self, lr: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """lr [N, G, 3, h, w] -> (raw SR, bicubic input), both [N, G, 3, H, W] on CPU.

        The network sees the input clipped to [0, 1], the range it was trained on; what lies
        beyond (highlights above the stretch, deep shadows below it) is enlarged bicubically
        and added to its output, so those pixels keep their values instead of saturating.
        """
        n, g = lr.shape[:2]
        inside, excess = split_range(np.ascontiguousarray(lr.reshape(n * g, *lr.shape[2:])))
        x = torch.from_numpy(inside) * 2 - 1
        try:
            up = self.resolver.upsample(x)
            sr = self.resolver.consistent(self.resolver.restore(up)[0], x)
            if excess is not None:  # values beyond the stretch: the identity path (bicubic)
                sr = sr + self.resolver.upsample(torch.from_numpy(excess) * 2).to(sr.device)
        except torch.OutOfMemoryError:
            raise EngineError(
                f"the device ran out of memory on a batch of {n} tiles; use a smaller batch size or tile size"
            ) from None
        except InferenceError as exc:
            raise EngineError(str(exc)) from None
        shape = (n, g, *sr.shape[1:])
        return sr.cpu().reshape(shape), up.cpu().reshape(shape)

    def estimate_stats(self, samples: list[Sample]) -> None:
        """samples: (lr [G,3,h,w], valid [h,w], raw SR [G,3,H,W], bicubic [G,3,H,W]) per window."""
        s = self.resolver.scale
        groups = len(self.radiometry.groups)
        sr_m = [_Moments() for _ in range(groups)]
        ref_m = [_Moments() for _ in range(groups)]
        for _lr, valid, sr, up in samples:
            v = torch.from_numpy(np.repeat(np.repeat(valid, s, 0), s, 1))
            for gi in range(groups):
                sr_m[gi].add(sr[gi], v)
                ref_m[gi].add(up[gi], v)
        self.stats = []
        for gi in range(groups):
            sm, ss = sr_m[gi].mean_std()
            rm, rs = ref_m[gi].mean_std()
            self.stats.append(ColorStats(sr_mean=sm, sr_std=ss, ref_mean=rm, ref_std=rs))

    @property
    def color_match(self) -> bool:
        """Whether the weights want the release's colour match (their metadata can say no)."""
        return bool(getattr(self.resolver, "color_match", True))

    def finish(self, sr: torch.Tensor) -> np.ndarray:
        """Raw SR of one window [G, 3, H, W] -> output bands [n, H, W] (float32; [0, 1] at the
        stretch's ends)."""
        n_out = sum(len(g.bands) for g in self.radiometry.groups)
        out = np.empty((n_out, *sr.shape[-2:]), dtype=np.float32)
        for gi, g in enumerate(self.radiometry.groups):
            x = sr[gi : gi + 1]
            if self.color_match:
                x = self.stats[gi].apply(x)
            img = (x / 2 + 0.5)[0]  # not clamped: the data type's limits bound the output
            if len(g.bands) == 1:
                out[g.slots[0]] = img.mean(dim=0).numpy()
            else:
                for k, slot in enumerate(g.slots):
                    out[slot] = img[k].numpy()
        return out
