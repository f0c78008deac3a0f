"""The student in a CPU runtime at fp32 and, once calibrated, at int8.

:class:`backend.inference.SuperResolver` holds one of these when ``precision='auto'`` (or
``'int8'``) runs on a CPU without native bf16 and a runtime is installed. The fp32 graphs
are exported once per weights (:mod:`backend.runtime.export`), each when first needed; the
int8 graphs are derived from them in memory for each calibration (:mod:`backend.runtime.int8`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from backend.model import SlimDiffSRStudent
from backend.runtime.cpu import cpu_info
from backend.runtime.engines import Network, StatisticsDispatch, available_runtimes, load_network
from backend.runtime.export import cached_onnx
from backend.runtime.int8 import activation_ranges, quantize_graph

PARALLEL_STREAMS = 2
"""Images a batch runs side by side in OpenVINO (where the CPU has at least as many cores);
measured on 2 cores, where more than two streams cannot run side by side."""


def pick_runtime(requested: str = "auto") -> str | None:
    """The runtime to use: ``requested``, or the first installed one for 'auto'; None when
    'auto' finds none (torch is used) or when 'torch' is asked for."""
    if requested == "torch":
        return None
    installed = available_runtimes()
    if requested == "auto":
        return installed[0] if installed else None
    if requested not in installed:
        raise ModuleNotFoundError(f"the inference runtime '{requested}' is not installed", name=requested)
    return requested


class CpuRuntimePath:
    """fp32 and int8 networks of one student in one runtime, with the CPU's physical cores."""

    def __init__(
        self, model: SlimDiffSRStudent, runtime: str, cache: Path | None = None, threads: int | None = None
    ) -> None:
        self.model = model
        self.runtime = runtime
        # torch's thread count follows OMP_NUM_THREADS, which process managers set to a
        # process's share of the CPU (a Dask worker: its --nthreads); the runtime keeps to it
        # rather than putting every worker of a machine on all of its cores.
        self.threads = threads or min(cpu_info().physical_cores, torch.get_num_threads())
        # Images of a batch that run side by side (OpenVINO's streams, one per pair of
        # threads at most: backend.runtime.engines.OpenVinoNetwork); the engine gives the
        # network batches of this many tiles.
        self.streams = PARALLEL_STREAMS if runtime == "openvino" and self.threads >= PARALLEL_STREAMS else 1
        self._cache = cache
        # Each graph is exported (a few seconds for new weights) and compiled on first use.
        self.fp32: Network = self._networks(lambda graph: graph)
        self.quantized = 0
        self._recorder: Network | None = None

    def _networks(self, transform: Callable[[Path], Path | bytes]) -> StatisticsDispatch:
        """The plain and the frozen-statistics network, each from ``transform`` of its exported
        graph when first used. The frozen one runs a raster's tiles, which all have one
        shape: OpenVINO compiles it for that shape (``fixed_shapes``)."""
        runtime, threads, streams = self.runtime, self.threads, self.streams
        return StatisticsDispatch(
            runtime,
            lambda: load_network(runtime, transform(self.plain_graph()), threads, streams),
            lambda: load_network(runtime, transform(self.statistics_graph()), threads, streams, True),
        )

    def plain_graph(self) -> Path:
        """The fp32 graph image -> image, each image with its own statistics."""
        return cached_onnx(self.model, self._cache)

    def statistics_graph(self) -> Path:
        """The fp32 graph taking frozen global statistics."""
        return cached_onnx(self.model, self._cache, "frozen")

    def record_graph(self) -> Path:
        """The fp32 graph recording one image's global statistics."""
        return cached_onnx(self.model, self._cache, "record")

    def export_graphs(self) -> list[Path]:
        """Every graph of this network, exported now rather than on first use: the first
        export of an architecture is a trace that later weights of it (the experts'
        mixtures) are spared (:mod:`backend.runtime.export`)."""
        return [self.plain_graph(), self.record_graph(), self.statistics_graph()]

    def record(self, crops: torch.Tensor) -> torch.Tensor:
        """The global statistics [1, size] of one image from a batch of its crops (network
        inputs), in fp32 whatever the tiles then run at; compiled on first use."""
        if self._recorder is None:
            self._recorder = load_network(self.runtime, self.record_graph(), self.threads)
        return self._recorder(crops)

    def int8(self, images: Sequence[torch.Tensor]) -> tuple[Network, list[torch.Tensor]]:
        """The int8 network calibrated on ``images`` (network inputs [B, C, H, W] in [-1, 1]),
        and torch fp32's output on each of them (from the calibration pass itself). Its two
        graphs are quantized from the fp32 ones on first use, as those are exported."""
        ranges, reference = activation_ranges(self.model, images)

        def quantized(graph: Path) -> bytes:
            int8_graph, self.quantized = quantize_graph(graph.read_bytes(), ranges)
            if not self.quantized:
                raise ValueError("no convolution of this network could be quantized")
            return int8_graph

        return self._networks(quantized), reference
