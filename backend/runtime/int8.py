"""Post-training static int8 quantization of the tiny autoencoder's residual blocks.

Where the FLOPs are: the tiny autoencoder's residual blocks (three dense 3x3
convolutions each) run at half (bundled model) or full (paper's student) output
resolution and hold most of the network's multiply-adds. Only their convolutions are
quantized: activations uint8 per tensor with ranges calibrated on real imagery, weights
int8 per output channel. Quantizing every convolution of the bundled model (the UNet's
1x1 projections, the RGB input and output convolutions) cost 42 dB of PSNR against fp32
on a real crop; these twelve alone cost 58 dB, which is far below what PSNR-Y on
../shared/data/eval can see.

The graph gets QuantizeLinear/DequantizeLinear pairs in front of those convolutions
(the QDQ format); OpenVINO and ONNX Runtime both fuse such a pair and its convolution
into one integer convolution. Nothing here runs the network: ranges come from the
torch network (``activation_ranges``), so calibrating costs one fp32 pass over the
calibration images, whose outputs are also the reference the int8 network is then probed
against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from backend.model import SlimDiffSRStudent
from backend.model.tiny_autoencoder import TinyBlock


@dataclass(frozen=True)
class Range:
    """Observed [low, high] of one convolution's input."""

    low: float
    high: float

    def quantization(self) -> tuple[float, int]:
        """(scale, zero point) of asymmetric uint8 covering [min(low, 0), max(high, 0)]."""
        low, high = min(self.low, 0.0), max(self.high, 0.0)
        scale = max(high - low, 1e-8) / 255.0
        zero = int(np.clip(round(-low / scale), 0, 255))
        return scale, zero


def target_convolutions(model: SlimDiffSRStudent) -> list[nn.Conv2d]:
    """The convolutions to quantize: those inside the tiny autoencoder's residual blocks."""
    return [
        conv
        for block in model.vae.modules()
        if isinstance(block, TinyBlock)
        for conv in block.conv
        if isinstance(conv, nn.Conv2d)
    ]


def weight_digest(weight: np.ndarray) -> str:
    """How a convolution is found again in the exported graph: by its weight values (names
    change with exporters; values do not)."""
    return hashlib.sha1(np.ascontiguousarray(weight, dtype=np.float32).tobytes()).hexdigest()


@torch.inference_mode()
def activation_ranges(
    model: SlimDiffSRStudent, images: Iterable[torch.Tensor]
) -> tuple[dict[str, Range], list[torch.Tensor]]:
    """Input ranges of ``target_convolutions`` over ``images`` (network inputs [B, C, H, W]
    in [-1, 1]), keyed by ``weight_digest`` of each convolution's weight; and the fp32
    network's output on each image (the accuracy probe's reference, for free)."""
    from backend.runtime.export import ImageOnly

    convs = target_convolutions(model)
    seen: dict[int, list[float]] = {}
    hooks = []
    for conv in convs:

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], key: int = id(conv)) -> None:
            x = inputs[0]
            lo, hi = float(x.min()), float(x.max())
            old = seen.get(key)
            seen[key] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]

        hooks.append(conv.register_forward_pre_hook(hook))
    try:
        net = ImageOnly(model).eval()
        outputs = [net(image.float()) for image in images]
    finally:
        for h in hooks:
            h.remove()
    if not outputs:
        raise ValueError("no calibration image")
    return {
        weight_digest(conv.weight.detach().float().cpu().numpy()): Range(*seen[id(conv)])
        for conv in convs
        if id(conv) in seen
    }, outputs


def quantize_graph(graph: bytes, ranges: dict[str, Range]) -> tuple[bytes, int]:
    """An fp32 ONNX graph -> the same graph with QDQ int8 on the convolutions in ``ranges``.

    Returns the new graph and how many convolutions were quantized.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(graph)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    new_nodes, new_inits = [], []
    done = 0
    for node in g.node:
        if node.op_type == "Conv" and len(node.input) >= 2 and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            r = ranges.get(weight_digest(w))
            if r is not None:
                tag = f"q{done}"
                scale, zero = r.quantization()
                new_inits += [
                    numpy_helper.from_array(np.array(scale, np.float32), f"{tag}_x_scale"),
                    numpy_helper.from_array(np.array(zero, np.uint8), f"{tag}_x_zero"),
                ]
                x_q, x_dq = f"{tag}_x_q", f"{tag}_x_dq"
                new_nodes += [
                    helper.make_node(
                        "QuantizeLinear",
                        [node.input[0], f"{tag}_x_scale", f"{tag}_x_zero"],
                        [x_q],
                        name=f"{tag}_xq",
                    ),
                    helper.make_node(
                        "DequantizeLinear",
                        [x_q, f"{tag}_x_scale", f"{tag}_x_zero"],
                        [x_dq],
                        name=f"{tag}_xdq",
                    ),
                ]
                w_scale = np.maximum(np.abs(w).reshape(w.shape[0], -1).max(axis=1), 1e-12) / 127.0
                w_q = np.clip(np.round(w / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
                new_inits += [
                    numpy_helper.from_array(w_q, f"{tag}_w_q"),
                    numpy_helper.from_array(w_scale.astype(np.float32), f"{tag}_w_scale"),
                    numpy_helper.from_array(np.zeros(w.shape[0], np.int8), f"{tag}_w_zero"),
                ]
                w_dq = f"{tag}_w_dq"
                new_nodes.append(
                    helper.make_node(
                        "DequantizeLinear",
                        [f"{tag}_w_q", f"{tag}_w_scale", f"{tag}_w_zero"],
                        [w_dq],
                        name=f"{tag}_wdq",
                        axis=0,
                    )
                )
                node.input[0], node.input[1] = x_dq, w_dq
                done += 1
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    # Initializers no node reads any more (the fp32 weights replaced above) are dropped.
    used = {name for n in g.node for name in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model.SerializeToString(), done
