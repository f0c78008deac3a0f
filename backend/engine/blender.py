"""Order-independent blending of window outputs into output blocks.

Each finished window adds ``weight * values`` into the accumulators of the blocks it
touches; a block is finalized (divided by the plan's weight sum) as soon as every window
touching it has been added, and its memory is released. Windows may arrive in any order
(several workers, several GPUs); only the set of live blocks depends on the order, and the
row-major order of the plan keeps it to about two rows of blocks.

A cluster region computes some of the plan's windows: it blends only the blocks all of
whose windows it owns (``blocks``) and hands the weighted pieces it computed for the
other blocks (:func:`contribution`) to whoever finishes them (:func:`sum_contributions`).
Adding the same pieces in the plan's window order gives the same float32 sums, bit for
bit, as one Blender fed the whole plan.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import numpy as np

from backend.engine.plan import Block, TilePlan, Window

Piece = tuple[int, int, int, np.ndarray]
"""(window index, row, column inside the block, weighted values [channels, h, w] float32)."""


def contribution(
    plan: TilePlan, window: Window, values: np.ndarray, weight: np.ndarray, block: Block
) -> Piece:
    """The part of ``weight * values`` of ``window`` that falls into ``block``."""
    s = plan.scale
    wy0, wx0 = s * window.row_off, s * window.col_off
    y0, y1 = max(block.y0, wy0), min(block.y0 + block.height, wy0 + values.shape[1])
    x0, x1 = max(block.x0, wx0), min(block.x0 + block.width, wx0 + values.shape[2])
    w = weight[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0]
    return window.index, y0 - block.y0, x0 - block.x0, values[:, y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0] * w


def finalize(plan: TilePlan, block: Block, acc: np.ndarray | None, channels: int) -> np.ndarray:
    """Weighted sum -> blended values; zeros when every window of the block was skipped
    (all nodata: the mask hides them)."""
    if acc is None:
        return np.zeros((channels, block.height, block.width), np.float32)
    acc /= np.maximum(plan.weight_sum(block), 1e-12)[None]
    return acc


def sum_contributions(plan: TilePlan, block: Block, pieces: Iterable[Piece], channels: int) -> np.ndarray:
    """Blend one block from the pieces its windows made, added in the plan's window order."""
    acc = None
    for _index, y, x, part in sorted(pieces, key=lambda p: p[0]):
        if acc is None:
            acc = np.zeros((channels, block.height, block.width), np.float32)
        acc[:, y : y + part.shape[1], x : x + part.shape[2]] += part
    return finalize(plan, block, acc, channels)


class Blender:
    """Weighted-sum accumulators of the blocks that are still waiting for windows.

    ``blocks``: (row, col) of the only blocks to blend (a cluster region's own blocks);
    None: every block of the plan.
    """

    def __init__(
        self, plan: TilePlan, channels: int, blocks: Collection[tuple[int, int]] | None = None
    ) -> None:
        self.plan = plan
        self.channels = channels
        self._only = None if blocks is None else set(blocks)
        self._acc: dict[tuple[int, int], np.ndarray] = {}
        self._pending: dict[tuple[int, int], int] = {}

    @property
    def live_blocks(self) -> int:
        return len(self._acc)

    def add(self, window: Window, values: np.ndarray | None) -> list[tuple[Block, np.ndarray]]:
        """Add one window's output ([channels, H, W] in output pixels, or None when the
        window was skipped as nodata); return the blocks this completes, as
        ``(block, blended [channels, h, w] float32)``."""
        plan = self.plan
        weight = plan.weight(window) if values is not None else None
        done: list[tuple[Block, np.ndarray]] = []
        for block in plan.blocks_of(window):
            key = (block.row, block.col)
            if self._only is not None and key not in self._only:
                continue
            if key not in self._pending:
                self._pending[key] = len(plan.windows_of(block))
            if values is not None and weight is not None:
                _, y, x, part = contribution(plan, window, values, weight, block)
                acc = self._acc.get(key)
                if acc is None:
                    acc = self._acc[key] = np.zeros((self.channels, block.height, block.width), np.float32)
                acc[:, y : y + part.shape[1], x : x + part.shape[2]] += part
            self._pending[key] -= 1
            if self._pending[key] == 0:
                del self._pending[key]
                done.append((block, finalize(plan, block, self._acc.pop(key, None), self.channels)))
        return done
