"""One blended output block -> the pixels written: data type, nodata, alpha, mask.

Shared by the local writer thread and the cluster's region tasks, so that a block comes
out the same wherever it was blended.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.engine.plan import Block, TilePlan
from backend.engine.radiometry import Radiometry
from backend.engine.reader import SourceInfo, TileReader
from backend.engine.writer import upsample_nearest


@dataclass
class FinishedBlock:
    """What :func:`backend.engine.writer.write_block` writes for one block."""

    row: int
    col: int
    values: np.ndarray
    """[bands, h, w] in the output's data type."""
    alpha: np.ndarray | None
    mask: np.ndarray | None


def keeps_non_finite(info: SourceInfo) -> bool:
    """Without a nodata value, alpha or mask, a float raster's NaN/inf pixels are its only
    way to say "no data"; they come out as they went in instead of being filled."""
    return info.mask == "none" and np.dtype(info.dtype).kind == "f"


def finish_block(
    plan: TilePlan,
    info: SourceInfo,
    radiometry: Radiometry,
    masks: TileReader,
    block: Block,
    blended: np.ndarray,
) -> FinishedBlock:
    """Convert ``blended`` ([bands, h, w] float32) to the output's type and masks; ``masks``
    reads the input under the block (validity, alpha, non-finite values)."""
    s = plan.scale
    r0, c0, h, w = plan.input_window_of(block)
    data_lr, valid_lr = masks.read_window(r0, c0, h, w)
    valid = upsample_nearest(valid_lr, s, block, (r0, c0))
    alpha = None
    if info.alpha:
        alpha = upsample_nearest(masks.read_alpha(r0, c0, h, w), s, block, (r0, c0))
    mask = valid if info.mask == "mask" else None
    values = radiometry.from_model(blended, valid)
    if keeps_non_finite(info) and not valid.all():
        _carry_non_finite(values, data_lr, valid, s, block, (r0, c0))
    return FinishedBlock(block.row, block.col, values, alpha, mask)


def _carry_non_finite(
    values: np.ndarray,
    data_lr: np.ndarray,
    valid: np.ndarray,
    scale: int,
    block: Block,
    origin: tuple[int, int],
) -> None:
    """Put the input's NaN/inf values (nearest, per band) where the output is invalid."""
    up = upsample_nearest(data_lr, scale, block, origin)
    invalid = ~valid
    for b in range(values.shape[0]):
        bad = invalid & ~np.isfinite(up[b])
        values[b][bad] = up[b][bad]
        rest = invalid & ~bad  # another band is not finite here: this one is no data either
        values[b][rest] = np.nan
