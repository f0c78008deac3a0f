"""The model step: a SuperResolver on batches of windows, with global statistics.

Two kinds of statistics would differ from tile to tile, and with them the picture:

* inside the network, those of its global operations (GroupNorm, the FSC/DSC gates'
  spatial means, QGAM's gathered context). :func:`gather_statistics` records them ONCE
  per raster before any tile, from the whole raster when it is at most
  ``STATISTICS_MAX_OUT_PIXELS`` of output, else from a copy reduced to that size; every
  tile then runs with them, whatever the tile size;
* after it, the release's colour match (the output's per-channel mean/std mapped onto
  those of its bicubic input), estimated ONCE from the model's output on the same image
  (nodata excluded), then applied to every tile.

When one window covers the whole raster, the network computes its own statistics and the
result equals ``SuperResolver.super_resolve`` (see docs/engine.md for the remaining
differences).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend.engine.options import EngineError, UpscaleOptions
from backend.engine.plan import TilePlan, Window
from backend.engine.radiometry import Radiometry
from backend.engine.reader import SourceInfo, TileReader
from backend.inference import ColorStats, InferenceError, SuperResolver
from backend.model.global_context import GlobalStatistics
from backend.radiometry import split_range
from backend.regimes import crop_positions
from backend.weights import LoadedWeights, WeightsError, default_weights_path, load_weights

ModelLike = SuperResolver | LoadedWeights | str | Path | None

STATISTICS_MAX_OUT_PIXELS = 1024 * 1024
"""Output pixels the statistics pass covers at most, whatever the tile size (a fixed cost,
about that of one default tile of the paper's student): rasters up to it (256 x 256
input pixels at x4) get exactly the statistics of a one-tile run."""


def resolve_model(model: ModelLike, options: UpscaleOptions) -> SuperResolver:
    """The SuperResolver for whatever the caller passed (its ``title`` names the model)."""
    try:
        if isinstance(model, SuperResolver):
            if options.scale is not None and options.scale != model.scale:
                raise EngineError(
                    f"the model runs at x{model.scale} but x{options.scale} was requested; "
                    f"use scale {model.scale}"
                )
            return model
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
        return SuperResolver.from_weights(model, options.device, options.precision)
    except (WeightsError, InferenceError) as exc:
        raise EngineError(str(exc)) from None


def adapt_to_raster(info: SourceInfo, radiometry: Radiometry, resolver: SuperResolver) -> SuperResolver:
    """The resolver for this raster: with degradation-aware weights, the experts mixed as
    the estimator finds the raster's degradation (:mod:`backend.regimes`), from crops at
    its own resolution on a fixed grid (so the same for every tile size); otherwise the
    resolver itself. Crops that hold nodata are passed over (its fill is no evidence);
    without any crop left, the file's own network runs."""
    if resolver.experts is None:
        return resolver
    crops = []
    with TileReader(info, radiometry) as reader:
        for row, col, side in crop_positions(info.height, info.width):
            tile = reader.read_tile(Window(-1, 0, 0, row, col, side, side))
            if tile.lr is not None and tile.valid.all():
                crops.append(tile.lr[0])
    if not crops:
        return resolver
    return resolver.for_regime(resolver.estimate_regime(np.stack(crops)))


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


def reduced_shape(plan: TilePlan, max_out_pixels: int = STATISTICS_MAX_OUT_PIXELS) -> tuple[int, int] | None:
    """(height, width) in input pixels of the reduced copy the statistics pass runs on, or
    None when the whole raster's output fits in ``max_out_pixels`` (it then runs on the
    raster itself). Depends on the raster and the scale only, never on the tile size."""
    s2 = plan.scale * plan.scale
    if plan.width * plan.height * s2 <= max_out_pixels:
        return None
    f = math.sqrt(plan.width * plan.height * s2 / max_out_pixels)
    return max(1, int(plan.height / f)), max(1, int(plan.width / f))


def statistics_input(plan: TilePlan, reader: TileReader) -> tuple[np.ndarray, np.ndarray] | None:
    """The image the statistics are recorded from: (model inputs [G, 3, h, w], valid [h, w]),
    or None when the raster has no valid pixel.

    The whole raster when its output is at most ``STATISTICS_MAX_OUT_PIXELS``: the tiles
    then get exactly the statistics of a one-tile run. Larger rasters: a copy reduced to
    fit, each pixel the mean of 2x2 samples of its area (a box filter on a point-sampled
    read: bounded memory and one pass over the file), valid where all four samples are.
    Measured with the bundled x4 model on a 400 x 400 aerial image (2.6 Mpx of output),
    tiled output against the one-tile run: this copy mean 0.28 DN, max 10; an
    area-resampled copy 0.45, max 19; a 3 x 3 grid of native-resolution crops of the same
    total area 0.73, max 31; the exact whole-raster statistics 0.002, max 1. The difference
    to the one-tile run is then the same at every tile size (64 and 128: 0.276 DN each).
    """
    shape = reduced_shape(plan)
    if shape is None:
        tile = reader.read_tile(Window(-1, 0, 0, 0, 0, plan.height, plan.width))
        return None if tile.lr is None or not tile.valid.any() else (tile.lr, tile.valid)
    h, w = shape
    data, valid = reader.read_reduced((2 * h, 2 * w))
    if not valid.any() or reader.radiometry is None:
        return None
    lr = reader.radiometry.to_model(data, valid)
    image = lr.reshape(*lr.shape[:2], h, 2, w, 2).mean(axis=(3, 5), dtype=np.float32)
    return np.ascontiguousarray(image), valid.reshape(h, 2, w, 2).all(axis=(1, 3))


def gather_statistics(plan: TilePlan, info: SourceInfo, step: ModelStep) -> dict[int, torch.Tensor]:
    """Every statistic the tiles share, gathered once per raster before the first tile:

    * the network's global statistics (``step.statistics``) when the plan has more than one
      window (a single window computes its own, as the release does);
    * the colour match (``step.stats``) when the weights want it: the raw output's and the
      bicubic input's per-channel moments over the valid pixels of the same image the
      network's statistics come from (the raster, or its reduced copy), so they too are the
      same whatever the tile size. Windows spread over the raster would be a sample that
      changes with the tile size, and the colour match multiplies every difference by the
      ratio of the input's contrast to the raw output's (tens for an untrained network).

    Returns raw outputs already computed for windows of the plan (the single window's, when
    the colour match needed it), which the main pass then takes instead of running them
    again. Raises EngineError when the colour match is wanted and no pixel is valid; else a
    raster without any valid pixel keeps no statistics.
    """
    step.statistics = None
    single = len(plan) == 1
    if single and not step.color_match:
        return {}
    with TileReader(info, step.radiometry) as reader:
        if single:
            tile = reader.read_tile(plan.window(0))
            found = None if tile.lr is None or not tile.valid.any() else (tile.lr, tile.valid)
        else:
            found = statistics_input(plan, reader)
    if found is None:
        if step.color_match:
            raise EngineError(
                f"{info.path.name} has no valid pixel in the selected bands (all nodata)", "input"
            )
        return {}
    image, valid = found
    if not single:
        step.gather_statistics(image[None])
    if not step.color_match:
        return {}
    sr, up = step.raw(image[None])
    step.estimate_color(valid, sr[0], up[0])
    return {0: sr[0]} if single else {}


class ModelStep:
    """Batches of model inputs -> raw SR -> colour match (global stats) -> output bands.

    ``statistics``: the network's global statistics for the raster's band groups
    (:func:`gather_statistics`), shared by every batch; None: each tile its own.
    """

    def __init__(self, resolver: SuperResolver, radiometry: Radiometry) -> None:
        self.resolver = resolver
        self.radiometry = radiometry
        self.stats: list[ColorStats] = []
        self.statistics: GlobalStatistics | None = None

    def gather_statistics(self, crops: np.ndarray) -> GlobalStatistics:
        """crops [K, G, 3, h, w] of the raster (model inputs) -> ``self.statistics``: each band
        group's statistics over its K crops together."""
        k = crops.shape[0]
        rows = []
        try:
            for group in range(crops.shape[1]):
                inside, _ = split_range(np.ascontiguousarray(crops[:, group]))
                up = self.resolver.pad(self.resolver.upsample(torch.from_numpy(inside) * 2 - 1))
                rows.append(self.resolver.record_statistics(up, joint=True).values)
        except torch.OutOfMemoryError:
            raise EngineError(
                "the device ran out of memory on the statistics pass over "
                f"{k} crop(s) of {crops.shape[-1]}x{crops.shape[-2]} pixels"
            ) from None
        except InferenceError as exc:
            raise EngineError(str(exc)) from None
        self.statistics = GlobalStatistics(torch.cat(rows))
        return self.statistics

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
            sr = self.resolver.consistent(self.resolver.restore(up, statistics=self.statistics)[0], x)
            if excess is not None:  # values beyond the stretch: the identity path (bicubic)
                sr = sr + self.resolver.upsample_sparse(torch.from_numpy(excess) * 2).to(sr.device)
        except torch.OutOfMemoryError:
            raise EngineError(
                f"the device ran out of memory on a batch of {n} tiles; use a smaller batch size or tile size"
            ) from None
        except InferenceError as exc:
            raise EngineError(str(exc)) from None
        shape = (n, g, *sr.shape[1:])
        return sr.cpu().reshape(shape), up.cpu().reshape(shape)

    def estimate_color(self, valid: np.ndarray, sr: torch.Tensor, up: torch.Tensor) -> None:
        """The colour match (``self.stats``) from one image's raw SR and bicubic input
        [G, 3, H, W], per band group, over its valid input pixels [h, w]."""
        s = self.resolver.scale
        v = torch.from_numpy(np.repeat(np.repeat(valid, s, 0), s, 1))
        self.stats = []
        for gi in range(len(self.radiometry.groups)):
            sr_m, ref_m = _Moments(), _Moments()
            sr_m.add(sr[gi], v)
            ref_m.add(up[gi], v)
            (sm, ss), (rm, rs) = sr_m.mean_std(), ref_m.mean_std()
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
