"""The tile plan and the blender, without models or files: geometry and weights."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from backend.engine import Blender, make_plan
from backend.engine.job import default_overlap
from backend.engine.plan import axis_starts, balanced_tile
from devtools.margin import receptive_margin


@pytest.mark.parametrize(
    "size,tile,overlap",
    [(100, 32, 8), (250, 128, 16), (129, 128, 16), (32, 32, 8), (20, 32, 8), (1000, 64, 0), (241, 128, 16)],
)
def test_axis_starts_cover_snap_and_overlap(size: int, tile: int, overlap: int) -> None:
    starts = axis_starts(size, min(tile, size), overlap)
    t = min(tile, size)
    assert starts[0] == 0
    assert starts[-1] + t == size  # last window snapped to the edge, never past it
    for a, b in itertools.pairwise(starts):
        assert a + t - b >= overlap  # neighbours overlap at least as asked
        assert b > a


@pytest.mark.parametrize(
    "w,h,scale,tile,overlap",
    [(300, 200, 4, 64, 16), (131, 77, 2, 32, 8), (50, 40, 8, 16, 4), (40, 40, 4, 64, 16)],
)
def test_weights_are_a_partition_of_unity(w: int, h: int, scale: int, tile: int, overlap: int) -> None:
    plan = make_plan(w, h, scale, tile, overlap, multiple=16, block=128)
    assert (plan.tile * scale) % 16 == 0
    total = np.zeros((plan.out_height, plan.out_width))
    for win in plan.windows():
        y, x = win.row_off * scale, win.col_off * scale
        total[y : y + win.height * scale, x : x + win.width * scale] += plan.weight(win)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    # the separable weight sum of every block agrees with the accumulated one
    for r in range(plan.block_grid[0]):
        for c in range(plan.block_grid[1]):
            b = plan.block_at(r, c)
            expected = total[b.y0 : b.y0 + b.height, b.x0 : b.x0 + b.width]
            np.testing.assert_allclose(plan.weight_sum(b), expected, atol=1e-6)


def test_outer_edges_are_not_feathered_and_interior_edges_are() -> None:
    plan = make_plan(300, 300, 4, 64, 16, multiple=16)
    first = plan.weight(plan.window(0))
    assert first[0, 0] == 1.0 and first[0, 100] == 1.0  # raster corner and top edge: full weight
    assert first[-1, 10] == 0.0 and first[10, -1] == 0.0  # interior edges: a discarded band
    assert plan.rows.ramp == 32  # half the output overlap


def test_blending_is_order_independent_and_exact_for_consistent_tiles() -> None:
    rng = np.random.default_rng(0)
    plan = make_plan(150, 110, 4, 48, 16, multiple=16, block=128)
    image = rng.random((2, plan.out_height, plan.out_width)).astype(np.float32)
    outputs = []
    for order in (range(len(plan)), rng.permutation(len(plan))):
        blender = Blender(plan, 2)
        result = np.full_like(image, np.nan)
        for i in order:
            win = plan.window(int(i))
            y, x = win.row_off * 4, win.col_off * 4
            tile = image[:, y : y + win.height * 4, x : x + win.width * 4]
            for block, arr in blender.add(win, tile):
                result[:, block.y0 : block.y0 + block.height, block.x0 : block.x0 + block.width] = arr
        assert blender.live_blocks == 0
        outputs.append(result)
    np.testing.assert_allclose(outputs[0], image, atol=1e-5)  # tiles that agree blend to the image itself
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-6)


def test_row_major_order_keeps_only_about_two_block_rows_alive() -> None:
    plan = make_plan(1000, 1000, 4, 128, 16, multiple=16, block=512)
    blender = Blender(plan, 1)
    peak = 0
    for win in plan.windows():
        blender.add(win, np.zeros((1, win.height * 4, win.width * 4), np.float32))
        peak = max(peak, blender.live_blocks)
    assert peak <= 2 * plan.block_grid[1] + 2


def test_bad_overlap_is_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        make_plan(100, 100, 4, 32, 20, multiple=16)


@pytest.mark.parametrize(
    "size,tile,overlap,step",
    [
        (1024, 192, 32, 2),
        (1000, 512, 32, 2),
        (4000, 512, 32, 2),
        (241, 128, 16, 1),
        (513, 512, 16, 4),
        (100, 100, 8, 1),
    ],
)
def test_balanced_tiles_keep_the_window_count_and_cut_the_overlap(
    size: int, tile: int, overlap: int, step: int
) -> None:
    t = balanced_tile(size, tile, overlap, step)
    assert (t <= tile and t % step == 0) or t == size
    fixed, balanced = axis_starts(size, min(tile, size), overlap), axis_starts(size, t, overlap)
    assert len(balanced) == len(fixed)
    assert len(balanced) * t <= len(fixed) * min(tile, size)
    for a, b in itertools.pairwise(balanced):
        assert a + t - b >= overlap
    assert balanced[-1] + t == size


def test_plan_on_a_1024_raster_computes_little_more_than_its_area() -> None:
    fixed_area = (7 * 192 / 1024) ** 2  # seven fixed 192-pixel windows per axis: 1.72x
    plan = make_plan(1024, 1024, 4, 192, 32, multiple=8)
    assert plan.grid == (7, 7)
    assert plan.computed_area < 0.85 * fixed_area
    assert make_plan(1024, 1024, 4, 512, 32, multiple=8).computed_area < 1.15


def test_default_tile_follows_the_memory_of_the_paper_default() -> None:
    from backend.engine.job import default_tile

    assert default_tile(4) == 192  # the paper's student, batch of four: 768 output pixels
    assert default_tile(4, full_res_width=64, batch=1) == 1536 // 4
    assert default_tile(4, full_res_width=32, batch=1) == 2048 // 4  # capped
    assert default_tile(4, full_res_width=32, batch=1, max_side=1280) == 1280 // 4  # the CPU's cap
    assert default_tile(8, full_res_width=128, batch=4) == 512 // 8
    # a very wide output: the strip of accumulators (tile + block rows) stays within budget
    wide = default_tile(4, full_res_width=32, batch=1, out_width=16000, bands=3, block=512)
    assert (4 * wide + 512) * 16000 * 3 * 4 <= 256 * 2**20
    assert wide < 2048 // 4


def test_receptive_margin_is_the_first_ring_at_the_interior_floor() -> None:
    # Edge effect falling to a floor of 1.0, then interior rings wobbling around it.
    profile = [20.0, 8.0, 3.0, 1.6, 1.4, 1.0, 1.1, 0.9, 1.0, 1.2, 0.8, 1.0, 1.7, 1.0, 0.9, 1.0]
    margin, floor = receptive_margin(profile)
    assert floor == pytest.approx(1.0)
    assert margin == 4  # 1.4 <= 1.5 x floor; the 1.7 deep inside does not count


def test_default_overlap_follows_the_recorded_margin() -> None:
    assert default_overlap(4) == 32 and default_overlap(8) == 16  # paper's student: 128 px
    assert default_overlap(4, 9) == 16 and default_overlap(8, 16) == 8  # at least 64 px
    assert default_overlap(4, 40) == 20  # twice a wider margin


@pytest.mark.slow  # two runs of the tiny student over 160x160
def test_engine_takes_its_default_overlap_from_the_weights(tmp_path, tiny_weights) -> None:
    from conftest import random_rgb, write_raster

    from backend.engine import UpscaleOptions, upscale_raster
    from backend.inference import SuperResolver
    from backend.weights import load_weights

    src = write_raster(tmp_path / "in.tif", random_rgb(160))
    resolver = SuperResolver.from_weights(load_weights(tiny_weights), "cpu", "fp32")
    assert resolver.receptive_margin is None
    report = upscale_raster(src, tmp_path / "a.tif", resolver, UpscaleOptions(tile_size=96))
    assert report.overlap == 32
    resolver.receptive_margin = 9
    report = upscale_raster(src, tmp_path / "b.tif", resolver, UpscaleOptions(tile_size=96))
    assert report.overlap == 16
