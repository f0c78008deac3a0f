"""Order-independent blending of window outputs into output blocks.

Each finished window adds ``weight * values`` into the accumulators of the blocks it
touches; a block is finalized (divided by the plan's weight sum) as soon as every window
touching it has been added, and its memory is released. Windows may arrive in any order
(several workers, several GPUs); only the set of live blocks depends on the order, and the
row-major order of the plan keeps it to about two rows of blocks.
"""

from __future__ import annotations

import numpy as np

from backend.engine.plan import Block, TilePlan, Window


class Blender:
    """Weighted-sum accumulators of the blocks that are still waiting for windows."""

    def __init__(self, plan: TilePlan, channels: int) -> None:
        self.plan = plan
        self.channels = channels
        self._acc: dict[tuple[int, int], np.ndarray] = {}
        self._pending: dict[tuple[int, int], int] = {}

    @property
    def live_blocks(self) -> int:
        return len(self._acc)

    def add(self, window: Window, values: np.ndarray | None) -> list[tuple[Block, np.ndarray]]:
        """Add one window's output ([channels, H, W] in output pixels, or None when the
        window was skipped as nodata); return the blocks this completes, as
        ``(block, blended [channels, h, w] float32)``."""
        plan, s = self.plan, self.plan.scale
        wy0, wx0 = s * window.row_off, s * window.col_off
        weight = plan.weight(window) if values is not None else None
        done: list[tuple[Block, np.ndarray]] = []
        for block in plan.blocks_of(window):
            key = (block.row, block.col)
            if key not in self._pending:
                self._pending[key] = len(plan.windows_of(block))
            if values is not None and weight is not None:
                y0, y1 = max(block.y0, wy0), min(block.y0 + block.height, wy0 + values.shape[1])
                x0, x1 = max(block.x0, wx0), min(block.x0 + block.width, wx0 + values.shape[2])
                acc = self._acc.get(key)
                if acc is None:
                    acc = self._acc[key] = np.zeros((self.channels, block.height, block.width), np.float32)
                w = weight[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0]
                acc[:, y0 - block.y0 : y1 - block.y0, x0 - block.x0 : x1 - block.x0] += (
                    values[:, y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0] * w
                )
            self._pending[key] -= 1
            if self._pending[key] == 0:
                del self._pending[key]
                done.append((block, self._finalize(block, self._acc.pop(key, None))))
        return done

    def _finalize(self, block: Block, acc: np.ndarray | None) -> np.ndarray:
        if acc is None:  # every window touching this block was skipped: all nodata
            return np.zeros((self.channels, block.height, block.width), np.float32)
        wsum = self.plan.weight_sum(block)
        acc /= np.maximum(wsum, 1e-12)[None]
        return acc
