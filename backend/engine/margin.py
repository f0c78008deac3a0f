"""The receptive margin of a trained model: how far into a tile its output still depends
on what lies beyond the tile's edge. It sets the default overlap between tiles.

Measured, not derived from the architecture: the global operations (QGAM, the pooled
gates of FSC/DSC) make every output pixel depend a little on the whole tile, so the
difference between a tile's output and the untiled output never reaches zero; it falls
from the edge to an interior floor. The margin is where it first comes down to 1.5x that
floor.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
import torch

from backend.inference import SuperResolver

FLOOR_FACTOR = 1.5


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """[3, size, size] float32 in [0, 1]: a smooth image-like pattern with seeded noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(9 * xx + c) * np.cos(7 * yy - c) for c in range(3)]) * 0.3 + 0.5
    return np.clip(base + 0.03 * rng.standard_normal((size, size, 3)).transpose(2, 0, 1), 0, 1).astype(
        np.float32
    )


def reference_image(size: int) -> np.ndarray:
    """[3, size, size] float32 in [0, 1]: a real aerial scene (the shared fixture
    RGB.byte.tif) when ../shared is there, else ``synthetic_image``."""
    shared = Path(os.environ.get("SLIMDIFFSR_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    path = shared / "data/fixtures/rasterio/RGB.byte.tif"
    if path.exists():
        with rasterio.open(path) as src:
            a = src.read([1, 2, 3], window=((250, 250 + size), (250, 250 + size)))
        return a.astype(np.float32) / 255
    return synthetic_image(size)


def edge_profile(resolver: SuperResolver, size: int = 192, tile: int = 128) -> list[float]:
    """Mean |tile output - untiled output| against the distance (output px) from the tile edge.

    The untiled input is the ``reference_image`` of ``size`` pixels, the tile its centre
    ``tile`` pixels.
    """
    s = resolver.scale
    lr = torch.from_numpy(reference_image(size))[None] * 2 - 1
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
