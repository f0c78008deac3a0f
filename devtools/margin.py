"""The receptive margin of a trained model: how far into a tile its output still depends
on what lies beyond the tile's edge. It sets the default overlap between tiles, through the
``receptive_margin`` that ``python -m backend.default_model finalize`` records in the
shipped weights (the engine only reads that number).

Measured, not derived from the architecture: the global operations (QGAM, the pooled
gates of FSC/DSC) make every output pixel depend a little on the whole tile, so the
difference between a tile's output and the untiled output never reaches zero; it falls
from the edge to an interior floor. The margin is where it first comes down to 1.5x that
floor. Always measured on the same real scene (``devtools.data.reference_image``), read
from an explicit shared folder, so the recorded number does not depend on the machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from backend.inference import SuperResolver
from devtools.data import reference_image

FLOOR_FACTOR = 1.5


def edge_profile(
    resolver: SuperResolver, size: int = 192, tile: int = 128, shared: str | Path | None = None
) -> list[float]:
    """Mean |tile output - untiled output| against the distance (output px) from the tile edge.

    The untiled input is the ``reference_image`` of ``size`` pixels from ``shared`` (default
    $SLIMDIFFSR_SHARED), the tile its centre ``tile`` pixels.
    """
    s = resolver.scale
    lr = torch.from_numpy(reference_image(size, shared))[None] * 2 - 1
    full, _ = resolver.restore(resolver.upsample(lr))
    oy, ox = (lr.shape[-2] - tile) // 2, (lr.shape[-1] - tile) // 2
    part, _ = resolver.restore(resolver.upsample(lr[..., oy : oy + tile, ox : ox + tile]))
    ref = full[..., oy * s : (oy + tile) * s, ox * s : (ox + tile) * s]
    diff = (part - ref).abs().mean(dim=1)[0].cpu().numpy()
    n = tile * s
    yy, xx = np.mgrid[:n, :n]
    dist = np.minimum(np.minimum(yy, xx), np.minimum(n - 1 - yy, n - 1 - xx))
    return [float(diff[dist == d].mean()) for d in range(n // 2)]


def receptive_margin(profile: list[float]) -> tuple[int, float]:
    """(margin in output px, interior floor) of an ``edge_profile``."""
    n = len(profile)
    floor = float(np.median(profile[n // 2 :]))
    # The first ring at the floor: the edge effect falls steadily, while deep inside the
    # tile the rings hold few pixels and the global effect wobbles around the floor.
    margin = next((d for d in range(n) if profile[d] <= FLOOR_FACTOR * floor), n)
    return margin, floor
