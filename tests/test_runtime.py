"""CPU fast paths: what the CPU reports, the exported graph in each runtime, int8 within its
bound on real imagery, and ``precision=auto`` falling back to fp32 when a probe fails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import backend.inference as inference
import backend.runtime.export as export
from backend.inference import AUTO_INT8_MIN_PSNR, InferenceError, SuperResolver, cpu_has_fast_bf16
from backend.model import SlimDiffSRStudent
from backend.model.config import TINY_STUDENT
from backend.model.fused_student import FusedStudent
from backend.model.global_context import GlobalContext
from backend.runtime.cpu import CpuInfo, cpu_info, parse_cpuinfo
from backend.runtime.engines import available_runtimes, load_network
from backend.runtime.export import GRAPHS, ImageOnly, cached_onnx, export_onnx

RUNTIMES = available_runtimes()
needs_runtime = pytest.mark.skipif(not RUNTIMES, reason="neither OpenVINO nor ONNX Runtime is installed")
avx2_only = pytest.mark.skipif(cpu_has_fast_bf16(), reason="this CPU has native bf16: auto picks bf16")

CPUINFO = """processor\t: 0
model name\t: AMD EPYC 7B13
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse sse2 avx f16c fma avx2 bmi2
processor\t: 1
model name\t: AMD EPYC 7B13
physical id\t: 0
core id\t: 1
flags\t\t: fpu sse sse2 avx f16c fma avx2 bmi2
"""


@pytest.fixture(autouse=True)
def graph_cache(tmp_path_factory, monkeypatch) -> Path:
    """Exported graphs go to one folder for this module, not the user's cache."""
    folder = tmp_path_factory.getbasetemp() / "runtime-cache"
    monkeypatch.setenv("SLIMDIFFSR_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def model() -> SlimDiffSRStudent:
    """A tiny student with the input residual, like the bundled models (random weights)."""
    torch.manual_seed(0)
    return SlimDiffSRStudent(TINY_STUDENT).eval()


@pytest.fixture(scope="module")
def real_crops(fixtures_dir: Path) -> list[np.ndarray]:
    """Four 48 px crops (HxWx3 in [0, 1]) of a real orthophoto."""
    import rasterio

    with rasterio.open(fixtures_dir / "rasterio/RGB.byte.tif") as src:
        data = src.read([1, 2, 3], window=rasterio.windows.Window(300, 250, 96, 96)).astype(np.float32) / 255
    return [
        np.ascontiguousarray(data[:, y : y + 48, x : x + 48].transpose(1, 2, 0))
        for y in (0, 48)
        for x in (0, 48)
    ]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_cpu_flags_cores_and_isa_from_cpuinfo() -> None:
    model, flags, cores = parse_cpuinfo(CPUINFO)
    assert model == "AMD EPYC 7B13" and cores == 2
    assert flags == {"avx2", "fma"}
    info = CpuInfo(model, flags, cores, 2)
    assert info.isa == "avx2" and not info.native_bf16
    assert info.describe() == "AMD EPYC 7B13, 2 cores (2 threads), avx2 fma"
    assert not info.fast_int8
    amx = CpuInfo("Xeon", frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8"}), 4, 8)
    assert amx.isa == "amx" and amx.native_bf16 and amx.fast_int8
    assert CpuInfo("Core i7-1260P", frozenset({"avx2", "fma", "avx_vnni"}), 12, 16).fast_int8


@needs_runtime
@avx2_only
def test_auto_on_avx2_without_vnni_runs_fp32_in_a_runtime_without_calibrating(model) -> None:
    auto = SuperResolver(model, 4, "cpu", "auto", auto_int8=False)
    assert auto.runtime == RUNTIMES[0] and auto.precision == "fp32" and not auto.needs_calibration
    assert auto.probe_error is not None and auto.probe_error < 1e-4
    # the engine offers int8 on large rasters, in a copy; an asked-for precision never changes
    assert auto.for_calibration(large=False) is None
    twin = auto.for_calibration(large=True)
    assert twin is not None and twin.needs_calibration and not auto.needs_calibration
    assert SuperResolver(model, 4, "cpu", "fp32", runtime=RUNTIMES[0]).for_calibration() is None


@needs_runtime
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_exported_graph_equals_torch_at_any_tile_size(model, runtime, graph_cache) -> None:
    """One graph, exported at one size, serves other sizes and batches at fp32 accuracy."""
    graph = cached_onnx(model, graph_cache)
    assert cached_onnx(model, graph_cache) == graph  # exported once
    network = load_network(runtime, graph, threads=1)
    for shape in ((1, 3, 48, 80), (2, 3, 96, 64)):
        noise = torch.rand(shape, generator=torch.Generator().manual_seed(1))
        x = torch.nn.functional.avg_pool2d(noise, 3, 1, 1)
        with torch.inference_mode():
            ref = ImageOnly(model).eval()(x * 2 - 1)
        out = network(x * 2 - 1)
        assert out.shape == ref.shape
        assert float((out - ref).abs().max()) < 1e-4


@pytest.mark.skipif("openvino" not in RUNTIMES, reason="OpenVINO is not installed")
def test_openvino_streams_run_a_batch_side_by_side_as_one_by_one(model, graph_cache) -> None:
    """A batch in two parallel streams (three images: one wave of two, then one alone) gives
    each image's own output, with the images' own statistics and with frozen ones; the
    engine then runs CPU tiles in batches of the streams."""
    x = torch.nn.functional.avg_pool2d(
        torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(3)), 3, 1, 1
    )
    x = x * 2 - 1
    for kind in ("", "frozen"):
        graph = cached_onnx(model, graph_cache, kind) if kind else cached_onnx(model, graph_cache)
        one = load_network("openvino", graph, threads=2)
        two = load_network("openvino", graph, threads=2, streams=2)
        rows = None
        if kind:
            with torch.inference_mode():
                rows = FusedStudent(model).eval().record(x, joint=False).values
        expected = torch.cat([one(x[i : i + 1], None if rows is None else rows[i : i + 1]) for i in range(3)])
        got = two(x, rows)
        assert got.shape == expected.shape == (3, 3, 48, 64)
        assert float((got - expected).abs().max()) < 1e-5
    resolver = SuperResolver(model, 4, "cpu", "fp32", runtime="openvino")
    assert resolver.parallel_tiles == (2 if resolver._cpu_path and resolver._cpu_path.threads >= 2 else 1)
    assert SuperResolver(model, 4, "cpu", "fp32", runtime="torch").parallel_tiles == 1


@pytest.mark.skipif("openvino" not in RUNTIMES, reason="OpenVINO is not installed")
def test_openvino_fixed_shape_builds_give_the_open_builds_output(model, graph_cache) -> None:
    """With fixed shapes every call (a batch or a lone image) runs a build compiled for its
    image shape, with the open build's output and the same output whatever the batch;
    at most STATIC_BUILDS shapes are kept, and the open builds are never compiled."""
    from backend.runtime.engines import STATIC_BUILDS, OpenVinoNetwork

    graph = cached_onnx(model, graph_cache)
    gen = torch.Generator().manual_seed(4)

    def images(n: int, h: int, w: int) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(torch.rand(n, 3, h, w, generator=gen), 3, 1, 1) * 2 - 1

    x = images(3, 48, 64)
    open_build = load_network("openvino", graph, threads=2)
    expected = torch.cat([open_build(x[i : i + 1]) for i in range(3)])
    network = OpenVinoNetwork(graph, threads=2, streams=2, fixed_shapes=True)
    got = network(x)  # one wave of two, then one alone
    assert float((got - expected).abs().max()) < 1e-5
    assert torch.equal(torch.cat([network(x[i : i + 1]) for i in range(3)]), got)
    assert list(network._fixed) == [((1, 3, 48, 64),)]
    for side in (32, 48, 64):
        lone = images(1, side, side)
        assert float((network(lone) - open_build(lone)).abs().max()) < 1e-5
    assert list(network._fixed) == [((1, 3, s, s),) for s in (32, 48, 64)][-STATIC_BUILDS:]
    assert network._single is None and not network._parallel


@needs_runtime
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_statistics_graphs_equal_torch(model, runtime, graph_cache) -> None:
    """The recording graph gathers what torch gathers (crops of one image together, at any
    size), and the frozen graph runs any tile size and batch with those statistics."""
    fused = FusedStudent(model).eval()
    record = load_network(runtime, cached_onnx(model, graph_cache, "record"), threads=1)
    frozen = load_network(runtime, cached_onnx(model, graph_cache, "frozen"), threads=1)
    for shape in ((1, 3, 48, 80), (3, 3, 32, 64)):
        x = torch.nn.functional.avg_pool2d(
            torch.rand(shape, generator=torch.Generator().manual_seed(2)), 3, 1, 1
        )
        with torch.inference_mode():
            ref = fused.record(x * 2 - 1, joint=True).values
        got = record(x * 2 - 1)
        assert got.shape == ref.shape == (1, ref.shape[1])
        assert float((got - ref).abs().max()) < 1e-4
        rows = ref.expand(shape[0], -1)
        with torch.inference_mode():
            expected = fused(x * 2 - 1, GlobalContext.frozen(rows))[1]
        assert float((frozen(x * 2 - 1, rows) - expected).abs().max()) < 1e-4


def _other_weights(model: SlimDiffSRStudent, seed: int) -> SlimDiffSRStudent:
    """``model``'s architecture with other random weights (as a new expert mixture is)."""
    torch.manual_seed(seed)
    return SlimDiffSRStudent(model.config).eval()


@pytest.mark.parametrize("graph", GRAPHS)
def test_new_weights_get_the_graph_a_trace_gives_without_tracing(model, graph, tmp_path, monkeypatch) -> None:
    """The first weights of an architecture are traced and their graph kept as the template;
    other weights of it get the template with their tensors written in: the same nodes and
    the same initializers as a fresh trace of them, and never a second trace."""
    import onnx
    from onnx import numpy_helper

    cached_onnx(model, tmp_path, graph)
    assert len(list(tmp_path.glob(f"template-*-{graph}.onnx"))) == 1
    other = _other_weights(model, 7)
    traced = export_onnx(other, tmp_path / "fresh" / "traced.onnx", graph)
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: pytest.fail("traced again"))
    swapped = onnx.load(str(cached_onnx(other, tmp_path, graph)))
    reference = onnx.load(str(traced))
    assert [(n.op_type, list(n.input), list(n.output)) for n in swapped.graph.node] == [
        (n.op_type, list(n.input), list(n.output)) for n in reference.graph.node
    ]
    got = {t.name: numpy_helper.to_array(t) for t in swapped.graph.initializer}
    want = {t.name: numpy_helper.to_array(t) for t in reference.graph.initializer}
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want)
    template = onnx.load(str(next(tmp_path.glob(f"template-*-{graph}.onnx"))))
    assert any(not np.array_equal(got[t.name], numpy_helper.to_array(t)) for t in template.graph.initializer)


@needs_runtime
def test_a_swapped_graph_runs_its_own_weights(model, graph_cache) -> None:
    """Run in a runtime, the graph made from the template computes the new weights'
    network (torch fp32 to 1e-4), not the template's."""
    cached_onnx(model, graph_cache)
    other = _other_weights(model, 8)
    network = load_network(RUNTIMES[0], cached_onnx(other, graph_cache), threads=1)
    x = torch.nn.functional.avg_pool2d(
        torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(4)), 3, 1, 1
    )
    with torch.inference_mode():
        want, template = ImageOnly(other).eval()(x * 2 - 1), ImageOnly(model).eval()(x * 2 - 1)
    got = network(x * 2 - 1)
    assert float((got - want).abs().max()) < 1e-4 < float((got - template).abs().max())


def test_a_template_that_does_not_fit_is_traced_over(model, tmp_path) -> None:
    """A template with an initializer the weights lack (a stale or foreign file under the
    architecture's name) is not used: the weights are traced."""
    import onnx
    from onnx import numpy_helper

    template = export_onnx(model, tmp_path / "template.onnx")
    broken = onnx.load(str(template))
    first = broken.graph.initializer[0]
    first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first), "no.such.tensor"))
    onnx.save(broken, str(template))
    assert export.swap_weights(template, model, tmp_path / "out.onnx") is None
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.skipif("openvino" not in RUNTIMES, reason="OpenVINO is not installed")
def test_only_exported_graphs_fill_the_compiled_cache(model, real_crops, graph_cache) -> None:
    """Each calibration makes a new int8 graph: caching its compiled form would grow the
    user's cache by megabytes with every raster; the exported fp32 graph is cached once."""
    compiled = graph_cache / "openvino"

    def blobs() -> set[str]:
        return {p.name for p in compiled.glob("*.blob")} if compiled.is_dir() else set()

    SuperResolver(model, 4, "cpu", "fp32", runtime="openvino")
    after_fp32 = blobs()
    assert after_fp32
    int8 = SuperResolver(model, 4, "cpu", "int8", runtime="openvino")
    assert int8.calibrate(real_crops[:2])
    int8.run_network(torch.zeros(2, 3, 64, 64))  # the streams build too
    assert blobs() == after_fp32


@needs_runtime
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_resolver_runs_tiles_with_shared_statistics(model, runtime, real_crops) -> None:
    """fp32 and int8 in a runtime record statistics and run tiles with them as torch does."""
    reference = SuperResolver(model, 4, "cpu", "fp32", runtime="torch")
    fp32 = SuperResolver(model, 4, "cpu", "fp32", runtime=runtime)
    int8 = SuperResolver(model, 4, "cpu", "int8", runtime=runtime)
    assert int8.calibrate(real_crops[:2])
    up = reference.upsample(torch.from_numpy(real_crops[2].transpose(2, 0, 1).copy())[None] * 2 - 1)
    statistics = reference.record_statistics(up)
    assert float((fp32.record_statistics(up).values - statistics.values).abs().max()) < 1e-4
    tiles = torch.cat([up[..., :96, :96], up[..., 96:, 96:]])
    ref = reference.run_network(tiles, statistics)
    assert float((fp32.run_network(tiles, statistics) - ref).abs().max()) < 1e-4
    assert float((int8.run_network(tiles, statistics) - ref).abs().max()) < 0.05
    assert float((reference.run_network(tiles) - ref).abs().max()) > 1e-4  # the statistics matter


@needs_runtime
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_cpu_path_stays_within_its_bound(model, runtime, real_crops) -> None:
    """fp32 in a runtime equals torch; int8 calibrated on real imagery stays within 1 %
    relative L2 and AUTO_INT8_MIN_PSNR of torch fp32 on other real crops."""
    reference = SuperResolver(model, 4, "cpu", "fp32", runtime="torch")
    fp32 = SuperResolver(model, 4, "cpu", "fp32", runtime=runtime)
    int8 = SuperResolver(model, 4, "cpu", "int8", runtime=runtime)
    assert fp32.description.endswith(f"{runtime} fp32") and reference.description.endswith(", fp32")
    assert int8.calibrate(real_crops[:2]) and int8.description.endswith(f"{runtime} int8")
    for lr in real_crops[2:]:
        ref = reference.super_resolve(lr, pad_multiple=16)
        assert np.abs(fp32.super_resolve(lr, pad_multiple=16) - ref).max() < 1e-4
        out = int8.super_resolve(lr, pad_multiple=16)
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.01
        assert psnr(out, ref) >= AUTO_INT8_MIN_PSNR
        assert np.abs(out - ref).max() > 0  # really int8, not fp32 again


@needs_runtime
@avx2_only
def test_auto_takes_int8_only_when_its_probe_passes(model, real_crops, monkeypatch) -> None:
    # auto_int8: as on a CPU with int8 dot products (VNNI, AMX), whatever this one has
    auto = SuperResolver(model, 4, "cpu", "auto", auto_int8=True)
    assert auto.runtime == RUNTIMES[0] and auto.precision == "fp32" and auto.needs_calibration
    assert auto.calibrate(real_crops) and auto.precision == "int8"
    assert auto.probe_psnr is not None and auto.probe_psnr >= AUTO_INT8_MIN_PSNR
    assert not auto.needs_calibration

    monkeypatch.setattr(inference, "AUTO_INT8_MIN_PSNR", 1000.0)  # no int8 can pass this
    strict = SuperResolver(model, 4, "cpu", "auto", auto_int8=True)
    assert not strict.calibrate(real_crops)
    assert strict.precision == "fp32" and strict.description.endswith(f"{RUNTIMES[0]} fp32")


@avx2_only
def test_auto_runs_torch_fp32_when_the_runtime_probe_fails(model, monkeypatch) -> None:
    monkeypatch.setattr(inference, "AUTO_PRECISION_TOLERANCE", 0.0)  # no path but torch can pass
    auto = SuperResolver(model, 4, "cpu", "auto")
    assert auto.runtime == "torch" and auto.precision == "fp32"
    assert auto.description.startswith("cpu (") and auto.description.endswith(", fp32")
    assert not auto.needs_calibration and not auto.calibrate([np.zeros((16, 16, 3), np.float32)])


def test_int8_requests_that_cannot_be_honoured(model) -> None:
    with pytest.raises(InferenceError, match="unknown runtime"):
        SuperResolver(model, 4, "cpu", "fp32", runtime="tensorrt")
    if torch.cuda.is_available():
        with pytest.raises(InferenceError, match="int8 runs on the CPU only"):
            SuperResolver(model, 4, "cuda", "int8")


@needs_runtime
def test_engine_calibrates_int8_on_the_raster_it_processes(rgb_crop, tmp_path) -> None:
    import rasterio

    from backend.engine import UpscaleOptions, upscale_raster
    from backend.weights import save_safetensors

    torch.manual_seed(0)
    weights = save_safetensors(SlimDiffSRStudent(TINY_STUDENT), tmp_path / "t_x4.safetensors", 4, name="t")
    src, _ = rgb_crop(96)
    auto = upscale_raster(
        src, tmp_path / "auto.tif", str(weights), UpscaleOptions(tile_size=64, precision="int8")
    )
    fp32 = upscale_raster(
        src, tmp_path / "fp32.tif", str(weights), UpscaleOptions(tile_size=64, precision="fp32")
    )
    assert auto.device.endswith("int8") and fp32.device.endswith(", fp32")
    with rasterio.open(tmp_path / "auto.tif") as a, rasterio.open(tmp_path / "fp32.tif") as b:
        assert a.tags()["SLIMDIFFSR_PRECISION"] == "int8"
        diff = np.abs(a.read().astype(int) - b.read().astype(int))
    assert np.quantile(diff, 0.99) <= 1 and diff.max() <= 8


@needs_runtime
def test_a_shared_resolver_is_calibrated_on_each_raster(model, rgb_crop, tmp_path) -> None:
    """A batch runs every file with one resolver: each raster gets int8 ranges of its own
    (another raster's could clip its values, unseen by the probe)."""
    from backend.engine import UpscaleOptions, upscale_raster

    resolver = SuperResolver(model, 4, "cpu", "int8")
    options = UpscaleOptions(tile_size=64, precision="int8")
    for i, side in enumerate((96, 80)):
        src, _ = rgb_crop(side)
        log: list[str] = []
        report = upscale_raster(src, tmp_path / f"{i}.tif", resolver, options, log=log.append)
        assert report.device.endswith("int8")
        assert f"device: {report.device} (calibrated on this raster)" in log
        # the shared resolver itself keeps no raster's calibration
        assert resolver.precision == "fp32" and resolver.needs_calibration


@needs_runtime
@avx2_only
@pytest.mark.skipif(cpu_info().fast_int8, reason="int8 dot products: auto calibrates on every raster")
def test_auto_calibrates_int8_only_where_the_raster_repays_it(rgb_crop, tmp_path, monkeypatch) -> None:
    """Without int8 dot products, auto stays fp32 on a small raster and calibrates int8 (its
    probe passing on the raster) from ``INT8_MIN_OUTPUT_PIXELS`` of output."""
    import rasterio

    from backend.engine import UpscaleOptions, calibration, upscale_raster

    src, _ = rgb_crop(96)
    options = UpscaleOptions(tile_size=128)
    logs: dict[str, list[str]] = {"small": [], "large": []}
    small = upscale_raster(src, tmp_path / "small.tif", options=options, log=logs["small"].append)
    assert small.device.endswith("fp32")
    monkeypatch.setattr(calibration, "INT8_MIN_OUTPUT_PIXELS", (96 * 4) ** 2)
    large = upscale_raster(src, tmp_path / "large.tif", options=options, log=logs["large"].append)
    assert large.device.endswith("int8")
    # the log names the precision that runs once calibration has switched to int8
    assert not any(line.startswith("device:") for line in logs["small"])
    assert f"device: {large.device} (calibrated on this raster)" in logs["large"]
    with rasterio.open(tmp_path / "small.tif") as a, rasterio.open(tmp_path / "large.tif") as b:
        diff = np.abs(a.read().astype(int) - b.read().astype(int))
    assert 0 < diff.max() <= 8 and np.quantile(diff, 0.99) <= 1


@pytest.fixture(scope="module")
def bundled_x4(tmp_path_factory) -> SuperResolver:
    """The bundled x4 file (degradation-aware: experts) in auto, as the engine loads it; its
    probe's graph goes to a folder of this module (module fixtures come before autouse ones)."""
    from backend.weights import default_weights_path, load_weights

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLIMDIFFSR_CACHE", str(tmp_path_factory.getbasetemp() / "bundled-cache"))
        return SuperResolver.from_weights(load_weights(default_weights_path(4)), "cpu", "auto")


@needs_runtime
@avx2_only
@pytest.mark.skipif(cpu_info().fast_int8, reason="int8 dot products: auto runs this raster in int8")
def test_a_mixture_takes_its_files_runtime_and_tiles_without_the_plain_graph(
    bundled_x4, rgb_crop, tmp_path, monkeypatch
) -> None:
    """The experts' mixture for a raster is the same graph with other weights: it skips the
    runtime probe the file passed, and a tiled raster exports only the two graphs it runs
    (statistics recording, tiles with frozen statistics), whose output equals torch's."""
    from backend.engine import UpscaleOptions, upscale_raster
    from backend.runtime.export import weights_key

    cache = tmp_path / "cache"
    monkeypatch.setenv("SLIMDIFFSR_CACHE", str(cache))
    assert bundled_x4.experts is not None and bundled_x4.runtime == RUNTIMES[0]
    mixed = bundled_x4.for_regime(((bundled_x4.experts.names[1], 0.5), (bundled_x4.experts.names[2], 0.5)))
    assert mixed is not bundled_x4 and mixed.runtime == bundled_x4.runtime and mixed.probe_error is None

    src, _ = rgb_crop(96)
    report = upscale_raster(src, tmp_path / "out.tif", mixed, UpscaleOptions(tile_size=64, precision="fp32"))
    assert report.tiles > 1
    key = weights_key(mixed.model)
    exported = {p.name for p in cache.glob("student-*.onnx")}
    assert exported == {f"student-{key}-frozen.onnx", f"student-{key}-record.onnx"}
    assert {p.name.rsplit("-", 1)[1] for p in cache.glob("template-*.onnx")} == {"frozen.onnx", "record.onnx"}

    reference = SuperResolver(mixed.model, 4, "cpu", "fp32", runtime="torch")
    up = reference.upsample(torch.from_numpy(_crop_lr(src)) * 2 - 1)
    statistics = reference.record_statistics(up)
    want = reference.run_network(up, statistics)
    assert float((mixed.run_network(up, mixed.record_statistics(up)) - want).abs().max()) < 1e-4


def _crop_lr(path: Path, side: int = 32) -> np.ndarray:
    """[1, 3, side, side] in [0, 1] from the top left of an 8-bit RGB raster."""
    import rasterio

    with rasterio.open(path) as src:
        return (src.read([1, 2, 3], window=((0, side), (0, side))).astype(np.float32) / 255)[None]


@needs_runtime
@avx2_only
def test_a_graph_that_cannot_be_written_is_a_one_line_error(
    bundled_x4, real_crops, tmpfs, monkeypatch
) -> None:
    """Graphs are exported on first use: a read-only cache (and temporary folder) then is an
    InferenceError naming the fix, not an OSError traceback from inside the runtime."""
    import tempfile

    monkeypatch.setenv("SLIMDIFFSR_CACHE", str(tmpfs("cache", "1m", readonly=True)))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpfs("tmp", "1m", readonly=True)))
    mixed = bundled_x4.for_regime(((bundled_x4.experts.names[2], 1.0),))
    up = torch.zeros(1, 3, 64, 64)
    with pytest.raises(InferenceError, match="cannot write the network's .* SLIMDIFFSR_CACHE"):
        mixed.record_statistics(up)
    # int8 calibration exports graphs too: auto stays fp32; asked-for int8 says why not
    twin = mixed.for_calibration(large=True)
    assert twin is not None and not twin.calibrate(real_crops, tiled=True) and twin.precision == "fp32"
    with pytest.raises(InferenceError, match="runtime cannot run this network .*cannot write"):
        SuperResolver(mixed.model, 4, "cpu", "int8")


def test_gpu_check_dry_run_on_the_cpu(tmp_path) -> None:
    """The CUDA check's whole flow on the CPU: correctness rows, timing rows, exit status 0."""
    from tools.gpu_check import main

    report = tmp_path / "gpu.json"
    code = main(
        [
            "--device",
            "cpu",
            "--out-sizes",
            "256",
            "--batches",
            "1,2",
            "--precisions",
            "fp32",
            "--budget-s",
            "300",
            "--json",
            str(report),
        ]
    )
    result = json.loads(report.read_text())
    assert code == 0 and result["verdict"] == "ok"
    assert [r["precision"] for r in result["correctness"]] == ["fp32"]
    assert result["correctness"][0]["max_dn"] == 0.0
    assert [(r["out"], r["batch"]) for r in result["timings"]] == [("256x256", 1), ("256x256", 2)]
    assert all(r["mpx_s"] > 0 for r in result["timings"])


@pytest.mark.skipif("openvino" not in RUNTIMES, reason="OpenVINO is not installed")
def test_engine_batches_cpu_tiles_by_the_runtimes_streams_with_the_same_output(tmp_path, model) -> None:
    """On the CPU the engine's default batch is the tiles the runtime runs side by side; the
    raster comes out the same as one tile at a time."""
    import rasterio
    from conftest import random_rgb, write_raster

    from backend.engine import UpscaleOptions, upscale_raster
    from backend.engine.job import Job, ModelFacts, default_batch

    assert default_batch("cpu") == 1 and default_batch("cpu", 2) == 2 and default_batch("cuda", 2) == 4
    src = write_raster(tmp_path / "in.tif", random_rgb(120))
    job = Job.open(src, tmp_path / "plan.tif", UpscaleOptions())
    job.plan_for(ModelFacts("tiny", 4, 16, 16, None, "cpu", "cpu", "fp32", 2))
    assert job.batch == 2
    resolver = SuperResolver(model, 4, "cpu", "fp32", runtime="openvino", color_match=False)
    outputs = []
    for name, batch in (("one.tif", 1), ("default.tif", None)):
        upscale_raster(
            src, tmp_path / name, resolver, UpscaleOptions(tile_size=64, overlap=8, batch_size=batch)
        )
        with rasterio.open(tmp_path / name) as dst:
            outputs.append(dst.read())
    assert np.array_equal(outputs[0], outputs[1])


def test_torch_is_asked_for_huge_pages_only_before_it_loads(monkeypatch) -> None:
    """The entry points ask torch's allocator for huge pages before torch loads; a user's own
    setting wins, and once torch is loaded the call changes nothing (it would be ignored)."""
    import os
    import subprocess
    import sys

    from backend.runtime.memory import TORCH_HUGE_PAGES, prefer_huge_pages

    code = (
        "import os; from backend.runtime.memory import prefer_huge_pages; prefer_huge_pages(); "
        f"print(os.environ.get('{TORCH_HUGE_PAGES}'))"
    )
    root = Path(__file__).resolve().parent.parent
    for preset, expected in ((None, "1"), ("0", "0")):
        env = {k: v for k, v in os.environ.items() if k != TORCH_HUGE_PAGES}
        if preset is not None:
            env[TORCH_HUGE_PAGES] = preset
        out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
        assert out.stdout.strip() == expected, out.stderr
    monkeypatch.delenv(TORCH_HUGE_PAGES, raising=False)
    prefer_huge_pages()  # torch is loaded in this process
    assert TORCH_HUGE_PAGES not in os.environ
