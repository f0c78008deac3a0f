"""Disjoint regions of a tile plan, for executors that spread one raster over processes.

Pure arithmetic, like the plan. The plan's window grid is cut into rectangles of
``region_tiles`` x ``region_tiles`` windows; every window is computed by exactly one region
(no window is computed twice). An output block all of whose windows lie in one region is
blended and finished by that region; a block that windows of several regions touch (a
*seam* block, along the regions' borders) is finished by a seam task from the weighted
pieces those regions computed for it. Memory per task is bounded by its region, whatever
the raster's size.
"""

from __future__ import annotations

from dataclasses import dataclass

from backend.engine.plan import TilePlan

REGION_OUT_PX = 2048
"""Default region side in output pixels: four 512-pixel blocks, so that a region's
accumulators (3 bands, float32) stay near 50 MB and a raster of a few thousand output
pixels already splits into enough regions to keep two workers busy."""


@dataclass(frozen=True)
class Region:
    index: int
    windows: tuple[int, ...]
    """Window indexes in the plan's (row-major) order."""
    own_blocks: tuple[tuple[int, int], ...]
    """(row, col) of the blocks this region finishes by itself."""
    seams: tuple[int, ...]
    """Indexes of the seams this region computes pieces for."""


@dataclass(frozen=True)
class Seam:
    index: int
    regions: tuple[int, ...]
    blocks: tuple[tuple[int, int], ...]


def default_region_tiles(plan: TilePlan) -> int:
    """Windows per region side: as many as fit ``REGION_OUT_PX``, at least one."""
    side = max(plan.rows.tile, plan.cols.tile) * plan.scale
    return max(1, REGION_OUT_PX // max(1, side))


def split_plan(plan: TilePlan, region_tiles: int) -> tuple[list[Region], list[Seam]]:
    """The plan's regions (row-major) and seams."""
    k = max(1, region_tiles)
    nr, nc = plan.grid
    ncr = -(-nc // k)

    def region_of(window: int) -> int:
        r, c = divmod(window, nc)
        return (r // k) * ncr + c // k

    n_regions = -(-nr // k) * ncr
    windows: list[list[int]] = [[] for _ in range(n_regions)]
    for w in range(len(plan)):
        windows[region_of(w)].append(w)
    own: list[list[tuple[int, int]]] = [[] for _ in range(n_regions)]
    seam_blocks: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    rows = [
        plan.rows.touching(plan.block_at(br, 0).y0, plan.block_at(br, 0).y0 + plan.block_at(br, 0).height)
        for br in range(plan.block_grid[0])
    ]
    cols = [
        plan.cols.touching(plan.block_at(0, bc).x0, plan.block_at(0, bc).x0 + plan.block_at(0, bc).width)
        for bc in range(plan.block_grid[1])
    ]
    for br, wrows in enumerate(rows):
        rrows = sorted({r // k for r in wrows})
        for bc, wcols in enumerate(cols):
            owners = tuple(rr * ncr + cc for rr in rrows for cc in sorted({c // k for c in wcols}))
            if len(owners) == 1:
                own[owners[0]].append((br, bc))
            else:
                seam_blocks.setdefault(owners, []).append((br, bc))
    seams = [Seam(i, owners, tuple(blocks)) for i, (owners, blocks) in enumerate(sorted(seam_blocks.items()))]
    of_region: list[list[int]] = [[] for _ in range(n_regions)]
    for s in seams:
        for r in s.regions:
            of_region[r].append(s.index)
    regions = [
        Region(i, tuple(windows[i]), tuple(own[i]), tuple(of_region[i]))
        for i in range(n_regions)
        if windows[i]
    ]
    return regions, seams
