"""The exported network in a CPU inference runtime: OpenVINO or ONNX Runtime.

Each runtime is optional: :func:`available_runtimes` lists those that import, and the
caller keeps torch when none does. Both get as many threads as the CPU has physical
cores (a second hardware thread on the same core only competes for its vector units),
and run the graph as it is, fp32 or with the QDQ int8 convolutions of
:mod:`backend.runtime.int8`.
"""

from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from backend.runtime.cpu import cpu_info

CPU_RUNTIMES = ("openvino", "onnxruntime")
"""The CPU inference runtimes, in order of preference (torch is not one of them)."""


class Network(Protocol):
    """Image batch [B, C, H, W] float32 in [-1, 1] (and, for a graph exported with them,
    the frozen global statistics [B, size]) -> output image, float32 torch tensor."""

    name: str

    def __call__(self, x: torch.Tensor, statistics: torch.Tensor | None = None) -> torch.Tensor: ...


def available_runtimes() -> list[str]:
    """The runtimes of ``CPU_RUNTIMES`` that are installed, in order of preference."""
    return [r for r in CPU_RUNTIMES if importlib.util.find_spec(r) is not None]


def _compiled_cache() -> Path | None:
    """A writable folder for OpenVINO's compiled graphs beside the exported ones, or None."""
    from backend.runtime.export import cache_dir

    folder = cache_dir() / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def _as_input(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


def _inputs(x: torch.Tensor, statistics: torch.Tensor | None) -> dict[int, np.ndarray]:
    """The graph's inputs by position: the image, then the statistics when given."""
    feed = {0: _as_input(x)}
    if statistics is not None:
        feed[1] = _as_input(statistics)
    return feed


def _owned(out: np.ndarray) -> np.ndarray:
    """A float32 copy of a runtime's output, which lives in its request's buffers (the next
    inference would overwrite it)."""
    return np.array(out, dtype=np.float32, copy=True)


class StatisticsDispatch:
    """One network as two compiled graphs: the plain one (each image's own statistics) and
    the one taking frozen global statistics, each built on first use: a tiled raster runs
    only the second, a raster in one window only the first."""

    def __init__(
        self, name: str, plain: Callable[[], Network], with_statistics: Callable[[], Network]
    ) -> None:
        self.name = name
        self._build_plain = plain
        self._build_frozen = with_statistics
        self._plain: Network | None = None
        self._frozen: Network | None = None

    def __call__(self, x: torch.Tensor, statistics: torch.Tensor | None = None) -> torch.Tensor:
        if statistics is None:
            if self._plain is None:
                self._plain = self._build_plain()
            return self._plain(x)
        if self._frozen is None:
            self._frozen = self._build_frozen()
        return self._frozen(x, statistics)


STATIC_BUILDS = 2
"""Fixed-shape builds an OpenVINO network keeps (least recently used dropped first): the
tiles' shape and, while a raster is calibrated, the accuracy probe's crops."""


class OpenVinoNetwork:
    """The graph compiled by OpenVINO's CPU plugin: for latency (one image on all threads)
    and, with ``streams`` > 1, also in parallel streams for batches (one image per stream).

    The compact network is many small operations at the input's resolution, where threads
    wait on each other: two images side by side, one thread each, measured 1.1-1.4x the
    throughput of one image on both threads (AMD EPYC family 25 model 1, Zen 3, 2 cores,
    AVX2 without AVX-512), while one image alone on one thread runs at 0.6x. So a batch of
    several images goes to the streams and a lone image to the latency build; each build
    is compiled on first use.

    ``fixed_shapes``: every call runs in the streams of a build compiled for its exact
    image shape (the tiles of a raster, which all have one shape: the graph with frozen
    statistics). With the height and width left open OpenVINO plans no memory reuse
    between layers and picks generic kernels for some of them: on the CPU above, for the
    bundled x4 model on two 1072 px tiles, the fixed-shape build ran 1.22x (fp32) and 1.15x
    (int8) the throughput of the open one, and its first batch touched 92 thousand fresh
    memory pages instead of 320-530 thousand (5 s of kernel time in page faults for the
    open int8 build, where a later batch takes 1.7 s in all). Each shape costs a compile
    (about 2 s; fp32 graphs come from OpenVINO's cache the next time), so graphs that see
    many sizes once each (a raster in one window, the statistics) keep the open build.
    """

    def __init__(
        self, graph: Path | bytes, threads: int, streams: int = 1, fixed_shapes: bool = False
    ) -> None:
        import openvino as ov

        self._core = ov.Core()
        compiled_cache = _compiled_cache()
        if compiled_cache is not None and not isinstance(graph, bytes):
            # OpenVINO keeps what it compiled there: the next run loads each graph in about a
            # third of the time (compact model: 1.5 s instead of 4-5 s). Only exported graphs,
            # which come back: a graph in memory is an int8 one calibrated on one raster,
            # whose compiled form (3.4 MB for the bundled model) would never be read again.
            self._core.set_property({"CACHE_DIR": str(compiled_cache)})
        if isinstance(graph, bytes):
            self._model = self._core.read_model(model=graph, weights=b"")
        else:
            self._model = self._core.read_model(str(graph))
        self._config = {
            "INFERENCE_NUM_THREADS": int(threads),
            # keep fp32 wherever the graph is fp32: bf16 is chosen by the accuracy probe,
            # not by the plugin's default for this CPU
            "INFERENCE_PRECISION_HINT": "f32",
            # OpenVINO pins its threads to the first cores by default: processes that each
            # take a share of the CPU (Dask workers of one thread) would all run on core 0
            # and share it (measured: 0.57 cores each for two workers on 2 cores, and the
            # cluster 1.3x slower than one process instead of 0.86x)
            "ENABLE_CPU_PINNING": threads >= cpu_info().physical_cores,
        }
        self.streams = max(1, min(int(streams), int(threads)))
        self.fixed_shapes = fixed_shapes
        self._single: Any = None
        self._parallel: list[Any] = []
        self._fixed: OrderedDict[tuple[tuple[int, ...], ...], list[Any]] = OrderedDict()
        self.name = "openvino"

    def _request(self) -> Any:
        if self._single is None:
            compiled = self._core.compile_model(
                self._model, "CPU", self._config | {"PERFORMANCE_HINT": "LATENCY"}
            )
            self._single = compiled.create_infer_request()
        return self._single

    def _fixed_requests(self, shapes: tuple[tuple[int, ...], ...]) -> list[Any]:
        """The streams' requests of the build for inputs of exactly ``shapes`` (one image)."""
        if shapes in self._fixed:
            self._fixed.move_to_end(shapes)
            return self._fixed[shapes]
        model = self._model.clone()
        model.reshape({port: list(shape) for port, shape in zip(model.inputs, shapes, strict=True)})
        while len(self._fixed) >= STATIC_BUILDS:
            self._fixed.popitem(last=False)
        self._fixed[shapes] = self._streams_build(model)
        return self._fixed[shapes]

    def _requests(self) -> list[Any]:
        if not self._parallel:
            self._parallel = self._streams_build(self._model)
        return self._parallel

    def _streams_build(self, model: Any) -> list[Any]:
        """``model`` compiled for the parallel streams: one request per stream."""
        compiled = self._core.compile_model(model, "CPU", self._config | {"NUM_STREAMS": self.streams})
        return [compiled.create_infer_request() for _ in range(self.streams)]

    def __call__(self, x: torch.Tensor, statistics: torch.Tensor | None = None) -> torch.Tensor:
        if not self.fixed_shapes and (x.shape[0] == 1 or self.streams == 1):
            return torch.from_numpy(_owned(self._request().infer(_inputs(x, statistics))[0]))
        feeds = [
            _inputs(x[i : i + 1], None if statistics is None else statistics[i : i + 1])
            for i in range(x.shape[0])
        ]
        if self.fixed_shapes:
            requests = self._fixed_requests(tuple(tuple(value.shape) for value in feeds[0].values()))
        else:
            requests = self._requests()
        outs: list[np.ndarray] = []
        for start in range(0, len(feeds), len(requests)):
            active = requests[: min(len(requests), len(feeds) - start)]
            for k, request in enumerate(active):
                request.start_async(feeds[start + k])
            for request in active:
                request.wait()
                outs.append(_owned(request.get_output_tensor(0).data))
        return torch.from_numpy(np.concatenate(outs))


class OnnxRuntimeNetwork:
    """The graph in an ONNX Runtime CPU session with every graph optimization on."""

    def __init__(self, graph: Path | bytes, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # no warnings on stderr, which the worker treats as log
        source = graph if isinstance(graph, bytes) else str(graph)
        self._session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]
        self.name = "onnxruntime"

    def __call__(self, x: torch.Tensor, statistics: torch.Tensor | None = None) -> torch.Tensor:
        feed = {self._inputs[i]: value for i, value in _inputs(x, statistics).items()}
        return torch.from_numpy(self._session.run(None, feed)[0])


def load_network(
    runtime: str, graph: Path | bytes, threads: int, streams: int = 1, fixed_shapes: bool = False
) -> Network:
    """``graph`` (a path or the serialized ONNX) in ``runtime`` with ``threads`` threads;
    OpenVINO runs a batch's images in up to ``streams`` parallel streams, with
    ``fixed_shapes`` in a build for each image shape (:class:`OpenVinoNetwork`)."""
    if runtime == "openvino":
        return OpenVinoNetwork(graph, threads, streams, fixed_shapes)
    if runtime == "onnxruntime":
        return OnnxRuntimeNetwork(graph, threads)
    raise ValueError(f"unknown runtime '{runtime}'; use one of {', '.join(CPU_RUNTIMES)}")
