"""The tile size does not change the picture: the network's global statistics are gathered
once per raster and shared by every tile (backend.model.global_context)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from backend.engine.job import Job, ModelFacts
from backend.engine.model import STATISTICS_MAX_OUT_PIXELS, ModelStep, gather_statistics, reduced_shape
from backend.engine.options import UpscaleOptions
from backend.engine.plan import make_plan
from backend.engine.run import upscale_raster
from backend.inference import SuperResolver
from backend.model import SlimDiffSRStudent
from backend.model.config import PAPER_STUDENT, TINY_STUDENT
from backend.model.global_context import GlobalContext
from backend.weights import default_weights_path, load_weights

MEAN_DN, MAX_DN = 1.0, 3.0
"""The bound of the acceptance: |tiled - one tile| over every output value, uint8 DN."""


@pytest.fixture(scope="module")
def tiny() -> SlimDiffSRStudent:
    torch.manual_seed(0)
    return SlimDiffSRStudent(TINY_STUDENT).eval()


def _image(batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    noise = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.avg_pool2d(noise, 5, 1, 2) * 2 - 1


@torch.inference_mode()
def test_recorded_statistics_reproduce_the_image_s_own(tiny) -> None:
    """Recording then replaying an image's statistics gives its untouched output; statistics
    of another image change it (they are really used)."""
    x, other = _image(2, 64, 96), _image(2, 64, 96, seed=1)
    own = tiny(x)[1]
    record = GlobalContext.record()
    assert torch.allclose(tiny(x, record)[1], own, atol=1e-5)
    values = record.statistics().values
    assert values.shape[0] == 2
    replay = GlobalContext.frozen(values)
    assert torch.allclose(tiny(x, replay)[1], own, atol=1e-5)
    replay.check_consumed()
    recorded_other = GlobalContext.record()
    tiny(other, recorded_other)
    assert (tiny(x, GlobalContext.frozen(recorded_other.statistics().values))[1] - own).abs().max() > 1e-3


@torch.inference_mode()
def test_joint_recording_treats_crops_as_one_image(tiny) -> None:
    """Two identical crops recorded jointly give that image's statistics; two different
    crops give neither crop's."""
    x = _image(1, 64, 64)
    alone, joint = GlobalContext.record(), GlobalContext.record(joint=True)
    tiny(x, alone)
    tiny(torch.cat([x, x]), joint)
    assert joint.statistics().values.shape == (1, alone.statistics().size)
    assert torch.allclose(joint.statistics().values, alone.statistics().values, atol=1e-4)
    mixed = GlobalContext.record(joint=True)
    tiny(torch.cat([x, _image(1, 64, 64, seed=3)]), mixed)
    assert (mixed.statistics().values - alone.statistics().values).abs().max() > 1e-3


def test_statistics_come_from_other_networks_are_refused(tiny) -> None:
    with pytest.raises(ValueError, match="recorded by another network"):
        frozen = GlobalContext.frozen(torch.zeros(1, 100_000))
        with torch.inference_mode():
            tiny(_image(1, 32, 32), frozen)
        frozen.check_consumed()


@pytest.mark.parametrize("size", [(160, 384), (700, 1300), (40, 5000)])
def test_statistics_input_depends_on_the_raster_only(size) -> None:
    """Same statistics input whatever the tile size: the raster itself when its output fits
    the cap, else a reduced copy of the same proportions within the cap."""
    h, w = size
    shapes = {reduced_shape(make_plan(w, h, 4, tile, 16, 32)) for tile in (64, 128, 320)}
    assert len(shapes) == 1
    shape = shapes.pop()
    if h * w * 16 <= STATISTICS_MAX_OUT_PIXELS:
        assert shape is None
    else:
        assert shape is not None
        rh, rw = shape
        assert rh * rw * 16 <= STATISTICS_MAX_OUT_PIXELS < (rh + 1) * (rw + 1) * 16
        assert abs(rw / rh - w / h) < 0.05 * w / h


def _crop(path: Path, out: Path, height: int, width: int) -> Path:
    """A georeferenced RGB crop of a real aerial image (uint8)."""
    with rasterio.open(path) as src:
        win = rasterio.windows.Window(0, 0, width, height)
        profile = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": 3,
            "dtype": "uint8",
            "crs": src.crs,
            "transform": src.window_transform(win),
        }
        data = src.read([1, 2, 3], window=win)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out


def _differences(
    resolver: SuperResolver, src: Path, tmp_path: Path, width: int, auto: bool = True
) -> dict[str, tuple]:
    """(mean, max) |output - one-tile output| in DN per tile size, and the windows each ran."""
    outputs, windows = {}, {}
    sizes = [("one", width), ("64", 64), ("128", 128)] + ([("auto", None)] if auto else [])
    for name, tile in sizes:
        report = upscale_raster(src, tmp_path / f"{name}.tif", resolver, UpscaleOptions(tile_size=tile))
        with rasterio.open(tmp_path / f"{name}.tif") as ds:
            outputs[name] = ds.read().astype(np.float64)
        windows[name] = report.tiles
    assert windows["one"] == 1 and windows["64"] > windows["128"] > 1
    return {
        name: (float(np.abs(d).mean()), float(np.abs(d).max()), windows[name])
        for name, _ in sizes[1:]
        for d in [outputs[name] - outputs["one"]]
    }


def test_bundled_model_gives_the_same_picture_at_every_tile_size(shared_data: Path, tmp_path: Path) -> None:
    """The bundled x4 model on its default runtime (OpenVINO fp32 on AVX2 CPUs): 64, 128
    and the automatic tile (two windows on this 384 px wide crop) against one tile."""
    src = _crop(shared_data / "eval/deepforest/HARV_051.tif", tmp_path / "harv.tif", 160, 384)
    resolver = SuperResolver.from_weights(load_weights(default_weights_path(4)), "cpu", "auto")
    found = _differences(resolver, src, tmp_path, 384)
    assert found["auto"][2] > 1
    for tile, (mean, worst, _) in found.items():
        assert mean <= MEAN_DN and worst <= MAX_DN, f"tile {tile}: mean {mean:.3f} DN, max {worst:.0f} DN"


@torch.inference_mode()
def test_paper_student_tiles_share_the_whole_image_s_global_operations(shared_data: Path) -> None:
    """The paper's student (random weights): with the image's statistics, a tile's output
    beyond the convolutions' reach of its cut edges (128 output pixels) is the one-tile
    output; with its own statistics (the release's way) it is not.

    The engine-level DN bound is not asserted for this network: with random weights and no
    input residual its raw output has 1/50 to 1/100 of its input's contrast, which the
    release's colour match multiplies back, so the small receptive-field truncation within
    96 output pixels of a tile's edge reaches tens of DN (measured; see the bundled-model
    test for the DN bound on a trained network).
    """
    torch.manual_seed(0)
    resolver = SuperResolver(SlimDiffSRStudent(PAPER_STUDENT).eval(), 4, "cpu", "fp32", runtime="torch")
    with rasterio.open(shared_data / "eval/deepforest/SJER_064.tif") as src:
        lr = src.read([1, 2, 3], window=((0, 64), (0, 128))).astype(np.float32) / 255
    up = resolver.upsample(torch.from_numpy(lr)[None] * 2 - 1)  # 256 x 512 output pixels
    statistics = resolver.record_statistics(up)
    whole, _ = resolver.restore(up, statistics=statistics)
    assert float((whole - resolver.restore(up)[0]).abs().max()) < 1e-5  # one tile: as the release
    tile = up[..., :256, :256]  # cut at its right and bottom edges
    inside = (slice(None), slice(None), slice(0, 128), slice(0, 128))
    shared = (resolver.restore(tile, statistics=statistics)[0] - whole[..., :256, :256])[inside]
    own = (resolver.restore(tile)[0] - whole[..., :256, :256])[inside]
    assert float(shared.abs().max()) < 1e-4
    assert float(own.abs().mean()) > 10 * float(shared.abs().mean()) + 1e-5


@pytest.mark.parametrize("height", [96, 400])
def test_colour_match_statistics_do_not_depend_on_the_tile_size(
    shared_data: Path, tmp_path: Path, height: int
) -> None:
    """The release's colour match is estimated on the image the network's statistics come
    from (the raster, or its reduced copy past 1 Mpx of output), not on a sample of the
    plan's windows, which would change with the tile size."""
    src = _crop(shared_data / "eval/deepforest/HARV_051.tif", tmp_path / "harv.tif", height, 400)
    torch.manual_seed(0)
    resolver = SuperResolver(SlimDiffSRStudent(TINY_STUDENT).eval(), 4, "cpu", "fp32", runtime="torch")
    assert resolver.color_match
    found = []
    for tile in (64, 128, 320):
        job = Job.open(src, tmp_path / "out.tif", UpscaleOptions(tile_size=tile))
        plan = job.plan_for(ModelFacts("tiny", 4, 16, resolver.multiple, None, "cpu", "cpu", "fp32"))
        assert len(plan) > 1
        step = ModelStep(resolver, job.radiometry)
        assert gather_statistics(plan, job.info, step) == {}
        assert step.statistics is not None
        found.append(step.stats[0])
    for other in found[1:]:
        for name in ("sr_mean", "sr_std", "ref_mean", "ref_std"):
            np.testing.assert_array_equal(getattr(other, name), getattr(found[0], name))


@pytest.mark.slow
def test_paper_student_gives_the_same_picture_at_every_tile_size(shared_data: Path, tmp_path: Path) -> None:
    """The paper's student (random weights, torch fp32) through the engine: 64, 128 and the
    automatic tile (two windows on this 384 px wide crop) against one tile, within the bound.

    Without the release's colour match: it maps each channel's raw output onto the input's
    contrast with one factor per raster, the same for every tile size, which multiplies any
    difference by that factor, about 1 for trained weights and 4 to 20 for this untrained
    network's nearly flat output (docs/engine.md has both measurements).
    """
    src = _crop(shared_data / "eval/deepforest/SJER_064.tif", tmp_path / "sjer.tif", 96, 384)
    torch.manual_seed(0)
    student = SlimDiffSRStudent(PAPER_STUDENT).eval()
    resolver = SuperResolver(student, 4, "cpu", "fp32", runtime="torch", color_match=False)
    found = _differences(resolver, src, tmp_path, 384)
    assert found["auto"][2] > 1
    for tile, (mean, worst, _) in found.items():
        assert mean <= MEAN_DN and worst <= MAX_DN, f"tile {tile}: mean {mean:.3f} DN, max {worst:.0f} DN"
