"""int8 calibration on the raster being processed, before its first tile.

A CPU without native bf16 runs the network in a CPU runtime; its int8 form needs the
ranges its activations take on real imagery, and the image the user is about to process
is the most representative real imagery there is. A few crops spread over the raster
calibrate it and then serve as the accuracy probe against torch fp32
(:meth:`backend.inference.SuperResolver.calibrate`): int8 is kept only if it stays within
the probe's budget, else the run continues in fp32. Done before the output's provenance
tags are written, so they name the precision that ran.

Where the CPU has int8 dot products (VNNI, AMX) ``auto`` always calibrates. Elsewhere (AVX2
alone) int8 still runs the network faster, but by less than calibrating costs on a small
raster, so ``auto`` calibrates only from ``INT8_MIN_OUTPUT_PIXELS`` of output.
"""

from __future__ import annotations

import numpy as np

from backend.engine.model import ModelStep
from backend.engine.options import EngineError
from backend.engine.plan import TilePlan
from backend.engine.reader import SourceInfo, TileReader
from backend.inference import InferenceError

INT8_MIN_OUTPUT_PIXELS = 25_000_000
"""Output pixels from which ``auto`` calibrates int8 on a CPU without int8 dot products.
Measured with the bundled x4 model on AMD EPYC family 25 model 1 (Zen 3, 2 cores, AVX2 +
FMA, no VNNI), tiles in fixed-shape builds (:class:`backend.runtime.engines.OpenVinoNetwork`),
CLI, engine time: 1024^2 -> 4096^2 (16.8 Mpx) fp32 22.8 / 23.7 / 24.2 s against int8
26.6 / 27.5 / 27.0 s; the whole 2041 x 1860 Landsat scene (60.7 Mpx) fp32 83.2 s against
int8 70.0 s. Calibrating, with the int8 build for the probe and the one for the tiles,
costs about 10 s more than loading the cached fp32 build, and int8 then saves about 0.38 s
per Mpx of output: it breaks even near 26 Mpx."""

CALIBRATION_CROPS = 4
"""Crops read for calibration, spread evenly over the plan's windows."""
CALIBRATION_SIDE = 64
"""Side of each crop in input pixels (256 output pixels at x4): enough pixels for stable
ranges, little enough that calibrating costs a fraction of one tile."""


def calibration_crops(
    plan: TilePlan,
    info: SourceInfo,
    step: ModelStep,
    count: int = CALIBRATION_CROPS,
    side: int = CALIBRATION_SIDE,
) -> list[np.ndarray]:
    """Central crops (HxWx3 in [0, 1], the first band group) of windows spread over the raster;
    windows with no valid pixel are passed over."""
    crops: list[np.ndarray] = []
    n = len(plan)
    order = list(dict.fromkeys(round(i) for i in np.linspace(0, n - 1, min(n, 4 * count))))
    with TileReader(info, step.radiometry) as reader:
        for idx in order:
            tile = reader.read_tile(plan.window(idx))
            if tile.lr is None or not tile.valid.any():
                continue
            lr = tile.lr[0]
            h, w = lr.shape[-2:]
            s = min(side, h, w)
            y, x = (h - s) // 2, (w - s) // 2
            crop = np.clip(lr[:, y : y + s, x : x + s], 0, 1).transpose(1, 2, 0)
            crops.append(np.ascontiguousarray(crop, dtype=np.float32))
            if len(crops) == count:
                break
    return crops


def calibrate_on_raster(plan: TilePlan, info: SourceInfo, step: ModelStep) -> bool:
    """Calibrate int8 on the raster when the precision asks for it (``auto`` on a CPU without
    int8 dot products: only on a large enough raster), in a copy of the resolver that then
    runs this raster (``step.resolver``): the resolver a batch shares keeps no raster's
    ranges, and every raster is calibrated on itself.

    Returns whether int8, calibrated on this raster, runs it.
    """
    output_pixels = plan.width * plan.height * plan.scale * plan.scale
    candidate = step.resolver.for_calibration(large=output_pixels >= INT8_MIN_OUTPUT_PIXELS)
    if candidate is None:
        return False
    try:
        if not candidate.calibrate(calibration_crops(plan, info, step), tiled=len(plan) > 1):
            return False
    except InferenceError as exc:
        raise EngineError(str(exc)) from None
    step.resolver = candidate
    return True
