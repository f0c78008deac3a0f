"""The student's inference network as an ONNX graph, exported once per weights.

Both CPU runtimes (OpenVINO, ONNX Runtime) read the same graph: the fused inference form
(:class:`backend.model.fused_student.FusedStudent`) from the bicubic input to the output
image, with batch, height and width left free so one graph serves every tile size. The
export traces the network (seconds for the bundled model, a minute for the paper's
student), so the graph is kept in a cache folder under a key made of the architecture,
the weight values, torch's version and ``EXPORT_VERSION``; a new weights file, even of
the same architecture, gets its own graph.

Tracing is done once per architecture, not once per weights: the first export of an
architecture is kept as a template whose initializers are named after the module's
``state_dict``, and any other weights of that architecture get their graph by writing their
tensors into a copy of it. The bundled models mix their experts per raster (each mixture is
new weights): a new mixture's two graphs then took 0.2 s instead of 9.4 s of tracing
(bundled x4, AMD EPYC family 25 model 1, 2 cores).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from backend.model import SlimDiffSRStudent
from backend.model.fused_student import FusedStudent
from backend.model.global_context import GlobalContext

EXPORT_VERSION = "2"
"""Bump when the exported graph changes for the same weights (invalidates caches)."""
OPSET = 17
"""ONNX opset: per-channel QuantizeLinear/DequantizeLinear need 13, LayerNorm-free graphs
are fine from 13; 17 is read by every OpenVINO and ONNX Runtime release we support."""


class ImageOnly(nn.Module):
    """The fused student returning only the image (the graph's single output).

    With ``statistics`` (the graph's second input, [B, size]) its global operations use
    those frozen statistics instead of the image's own
    (:mod:`backend.model.global_context`).
    """

    def __init__(self, student: SlimDiffSRStudent) -> None:
        super().__init__()
        self.fused = FusedStudent(student)

    def forward(self, image: torch.Tensor, statistics: torch.Tensor | None = None) -> torch.Tensor:
        context = None if statistics is None else GlobalContext.frozen(statistics)
        return self.fused(image, context)[1]


class StatisticsOnly(nn.Module):
    """The fused student's recording pass: a batch of crops of one image (or one image) ->
    its global statistics [1, size] (:meth:`FusedStudent.record`, joint)."""

    def __init__(self, student: SlimDiffSRStudent) -> None:
        super().__init__()
        self.fused = FusedStudent(student)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fused.record(image, joint=True).values


GRAPHS = ("plain", "frozen", "record")
"""The graphs of one weights file: ``plain`` image -> image (each image's own statistics),
``frozen`` (image, statistics) -> image, ``record`` image crops -> statistics."""


def cache_dir() -> Path:
    """``$SLIMDIFFSR_CACHE``, else ``$XDG_CACHE_HOME/slimdiffsr``, else ``~/.cache/slimdiffsr``."""
    if os.environ.get("SLIMDIFFSR_CACHE"):
        return Path(os.environ["SLIMDIFFSR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "slimdiffsr"


def architecture_key(model: SlimDiffSRStudent) -> str:
    """A digest of what a traced graph depends on besides the weight values."""
    text = f"{EXPORT_VERSION} {torch.__version__} {OPSET} {model.config.to_json()}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def weights_key(model: SlimDiffSRStudent) -> str:
    """A digest of the architecture and every weight value (the cache key of its graph)."""
    h = hashlib.sha256()
    h.update(f"{EXPORT_VERSION} {torch.__version__} {model.config.to_json()}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _graph_module(model: SlimDiffSRStudent, graph: str) -> nn.Module:
    """The module traced for ``graph``; its ``state_dict`` names the graph's initializers."""
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph '{graph}'; use one of {', '.join(GRAPHS)}")
    return (StatisticsOnly if graph == "record" else ImageOnly)(model).eval().to("cpu", torch.float32)


def _write_atomically(path: Path, write: Callable[[str], None]) -> Path:
    """``write(temporary name)`` then rename to ``path``: a concurrent run never reads half a
    file, and a failed write leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx.part", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def export_onnx(model: SlimDiffSRStudent, path: Path, graph: str = "plain") -> Path:
    """Trace one of ``model``'s fused inference ``GRAPHS`` into ``path`` (fp32, dynamic B, H, W).

    The ``frozen`` graph takes the global statistics as a second input ``statistics``
    [B, size], so one graph serves every tile of every raster. Constants are not folded:
    every initializer is then one of the module's tensors under its ``state_dict`` name
    (:func:`swap_weights` relies on it); both runtimes fold them when they compile.
    """
    net = _graph_module(model, graph)
    size = max(64, model.config.downscale * 2)
    example = torch.zeros(1, model.config.image_channels, size, size)
    args: tuple[torch.Tensor, ...] = (example,)
    names, axes = ["image"], {"image": {0: "batch", 2: "height", 3: "width"}}
    if graph == "frozen":
        with torch.no_grad():
            args += (FusedStudent(model).record(example).values,)
        names.append("statistics")
        axes["statistics"] = {0: "batch"}
    outputs = {"statistics": {}} if graph == "record" else {"output": {0: "batch", 2: "height", 3: "width"}}

    def trace(tmp: str) -> None:
        threads = torch.get_num_threads()
        # Tracing runs the network once on a small input: one thread is as fast, and never
        # stalls in thread barriers when other work holds the cores.
        torch.set_num_threads(1)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer notes about Python values taken as constants
                torch.onnx.export(
                    net,
                    args,
                    tmp,
                    input_names=names,
                    output_names=list(outputs),
                    dynamic_axes={**axes, **outputs},
                    opset_version=OPSET,
                    dynamo=False,
                    do_constant_folding=False,
                )
        finally:
            torch.set_num_threads(threads)

    return _write_atomically(path, trace)


def swap_weights(template: Path, model: SlimDiffSRStudent, path: Path, graph: str = "plain") -> Path | None:
    """``template`` (a graph :func:`export_onnx` traced from other weights of ``model``'s
    architecture) with ``model``'s tensors written into its initializers, at ``path``; None
    when some initializer has no tensor of that name, shape and type in ``model`` (the
    caller then traces).

    The graph's operations do not depend on the weight values (no data-dependent branch in
    the network; tests compare the result with a fresh trace), so this is the graph a trace
    of ``model`` would give.
    """
    import onnx
    from onnx import helper, numpy_helper

    state = _graph_module(model, graph).state_dict()
    onnx_model = onnx.load(str(template))
    for init in onnx_model.graph.initializer:
        tensor = state.get(init.name)
        if tensor is None:
            return None
        new = tensor.detach().to("cpu").contiguous().numpy()
        if new.shape != tuple(init.dims) or new.dtype != helper.tensor_dtype_to_np_dtype(init.data_type):
            return None
        init.CopyFrom(numpy_helper.from_array(new, init.name))
    return _write_atomically(path, lambda tmp: onnx.save(onnx_model, tmp))


def _export(model: SlimDiffSRStudent, base: Path, path: Path, graph: str) -> Path:
    """``model``'s ``graph`` at ``path``: from its architecture's template in ``base`` when
    there is one, else traced (and the trace kept as the template)."""
    template = base / f"template-{architecture_key(model)}-{graph}.onnx"
    if template.is_file():
        swapped = swap_weights(template, model, path, graph)
        if swapped is not None:
            return swapped
    export_onnx(model, path, graph)
    try:  # the trace is the template: a second name for the same file, not a copy
        os.link(path, template)  # (the paper student's graphs are 220 MB each)
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links

        def copy(tmp: str) -> None:
            shutil.copyfile(path, tmp)

        _write_atomically(template, copy)
    return path


def cached_onnx(model: SlimDiffSRStudent, folder: Path | None = None, graph: str = "plain") -> Path:
    """One fp32 graph of ``model`` (``GRAPHS``), exported on first use and reused from the
    cache after.

    An unwritable cache folder falls back to the system's temporary folder.
    """
    key = weights_key(model) + ("" if graph == "plain" else f"-{graph}")
    for base in (folder or cache_dir(), Path(tempfile.gettempdir()) / "slimdiffsr-cache"):
        path = base / f"student-{key}.onnx"
        if path.is_file():
            return path
        try:
            return _export(model, base, path, graph)
        except OSError:
            continue
    raise OSError(f"cannot write the exported network to {folder or cache_dir()} or the temporary folder")
