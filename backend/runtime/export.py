"""The student's inference network as an ONNX graph, exported once per weights.

Both CPU runtimes (OpenVINO, ONNX Runtime) read the same graph: the fused inference form
(:class:`backend.model.fused_student.FusedStudent`) from the bicubic input to the output
image, with batch, height and width left free so one graph serves every tile size. The
export traces the network (seconds for the bundled model, a minute for the paper's
student), so the graph is kept in a cache folder under a key made of the architecture,
the weight values, torch's version and ``EXPORT_VERSION``; a new weights file, even of
the same architecture, gets its own graph.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from backend.model import SlimDiffSRStudent
from backend.model.fused_student import FusedStudent
from backend.model.global_context import GlobalContext

EXPORT_VERSION = "1"
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


def weights_key(model: SlimDiffSRStudent) -> str:
    """A digest of the architecture and every weight value (the cache key of its graph)."""
    h = hashlib.sha256()
    h.update(f"{EXPORT_VERSION} {torch.__version__} {model.config.to_json()}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def export_onnx(model: SlimDiffSRStudent, path: Path, graph: str = "plain") -> Path:
    """Write one of ``model``'s fused inference ``GRAPHS`` to ``path`` (fp32, dynamic B, H, W).

    The ``frozen`` graph takes the global statistics as a second input ``statistics``
    [B, size], so one graph serves every tile of every raster. Written to a temporary name
    and renamed, so a concurrent run never reads half a file.
    """
    if graph not in GRAPHS:
        raise ValueError(f"unknown graph '{graph}'; use one of {', '.join(GRAPHS)}")
    net: nn.Module = (
        (StatisticsOnly if graph == "record" else ImageOnly)(model).eval().to("cpu", torch.float32)
    )
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx.part", dir=path.parent)
    os.close(fd)
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
                do_constant_folding=True,
            )
        os.replace(tmp, path)
    finally:
        torch.set_num_threads(threads)
        if os.path.exists(tmp):
            os.unlink(tmp)
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
            return export_onnx(model, path, graph)
        except OSError:
            continue
    raise OSError(f"cannot write the exported network to {folder or cache_dir()} or the temporary folder")
