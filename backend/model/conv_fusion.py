"""Consecutive linear convolutions of the tiny autoencoder, evaluated as one.

In the compact students the tiny autoencoder's full-resolution ends are linear chains:
the encoder's RGB input convolution feeds its first stride-2 convolution directly, and the
decoder's last x2 nearest upsampling feeds a convolution and then the RGB output
convolution, with no activation between them. Each chain is one linear map, so at
inference it can run as one convolution:

* two 3x3 convolutions (the second of stride s) compose into one 5x5 convolution of
  stride s;
* a x2 nearest upsampling followed by such a pair is, for each of the four output
  phases, a 3x3 convolution at the lower resolution: one convolution with four times the
  output channels, then a pixel shuffle. The upsampled map is never built.

At full output resolution this is where the network spent most of its memory traffic
(the decoder tail alone measured 11x faster on the CPU in bf16). The composition
differs from the original only where the zero padding of the intermediate map matters,
the output's outermost ring of pixels; those rows and columns are recomputed with the
original convolutions on thin strips, so the result equals the original chain up to
floating-point rounding at every pixel, which keeps tiles seamless.

The fused form is for inference only (its kernels are buffers, not parameters).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

# Input rows (or columns) at the start of a strip from which the original chain gives
# the output's first row exactly: a chain of two 3x3 convolutions reads 2 rows beyond it,
# through the upsampling 1 input row.
_STRIP = 4


def _is_plain_conv(m: nn.Module) -> bool:
    """A 3x3, padding-1, dense, zero-padded convolution."""
    return (
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (3, 3)
        and m.padding == (1, 1)
        and m.dilation == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
    )


def _is_nearest_x2(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.Upsample)
        and m.mode == "nearest"
        and m.size is None
        and m.scale_factor in (2, 2.0, (2.0, 2.0), (2, 2))
    )


def _compose(first: nn.Conv2d, second: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel [Cout, Cin, 5, 5] and bias of second(first(x)) without the padding between.

    Cross-correlations compose by convolving their kernels: tap u of the result sums
    second[p] * first[u - p]. Computed in float64 so the fused kernel is exact to fp32.
    """
    w1, w2 = first.weight.double(), second.weight.double()
    kernel = w1.new_zeros(w2.shape[0], w1.shape[1], 5, 5)
    for p in range(3):
        for q in range(3):
            kernel[:, :, p : p + 3, q : q + 3] += torch.einsum("om,mikl->oikl", w2[:, :, p, q], w1)
    bias = w2.new_zeros(w2.shape[0]) if second.bias is None else second.bias.double().clone()
    if first.bias is not None:
        bias += torch.einsum("omkl,m->o", w2, first.bias.double())
    return kernel, bias


def _phases(kernel: torch.Tensor) -> torch.Tensor:
    """Kernel [Co, Ci, k, k] (k odd, <= 5) on a x2 nearest-upsampled map -> [4*Co, Ci, 3, 3].

    Output pixel (2i+a, 2j+b) reads upsampled pixel 2i+a+u-r, which is input pixel
    i + (a+u-r)//2 (r the kernel radius): each phase's taps fold onto three input
    offsets. Channel c*4 + a*2 + b is phase (a, b) of channel c, pixel_shuffle's order.
    """
    co, ci, k, _ = kernel.shape
    r = k // 2
    out = kernel.new_zeros(co, 2, 2, ci, 3, 3)
    for a in range(2):
        for u in range(k):
            dy = (a + u - r) // 2 + 1
            for b in range(2):
                for v in range(k):
                    dx = (b + v - r) // 2 + 1
                    out[:, a, b, :, dy, dx] += kernel[:, :, u, v]
    return out.reshape(co * 4, ci, 3, 3)


def _chain_problem(layers: list[nn.Module]) -> str | None:
    """Why ``layers`` is not a fusable chain ([nearest x2] then two 3x3 convolutions, only
    the second strided and only without upsampling), or None when it is."""
    upsample = bool(layers) and _is_nearest_x2(layers[0])
    convs = layers[1:] if upsample else layers
    if len(convs) != 2 or not all(_is_plain_conv(c) for c in convs):
        return "a linear chain is [nearest x2] then two 3x3 convolutions"
    if convs[0].stride != (1, 1) or (upsample and convs[1].stride != (1, 1)):
        return "only the second convolution of a chain without upsampling may be strided"
    return None


class LinearConvChain(nn.Module):
    """An optional x2 nearest upsampling then two 3x3 convolutions, as one convolution.

    ``forward`` computes what ``nn.Sequential(*layers)`` computes; ``layers`` are kept to
    recompute the output's border ring.
    """

    kernel: torch.Tensor
    bias: torch.Tensor

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        problem = _chain_problem(layers)
        if problem:
            raise ValueError(problem)
        self.upsample = _is_nearest_x2(layers[0])
        first, second = (cast(nn.Conv2d, m) for m in layers[-2:])  # checked just above
        self.original = nn.Sequential(*layers)
        self.stride: int = second.stride[0]
        with torch.no_grad():
            kernel, bias = _compose(first, second)
            if self.upsample:
                kernel, bias = _phases(kernel), bias.repeat_interleave(4)
        self.register_buffer("kernel", kernel.to(first.weight.dtype))
        self.register_buffer("bias", bias.to(first.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            y = F.pixel_shuffle(F.conv2d(x, self.kernel, self.bias, padding=1), 2)
        else:
            y = F.conv2d(x, self.kernel, self.bias, stride=self.stride, padding=2)
        if torch.onnx.is_in_onnx_export():
            return self._with_exact_border(x, y)
        self._exact_border(x, y)
        return y

    def _exact_border(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Overwrite y's outermost rows and columns with the original chain's values."""
        for dim in (-2, -1):
            size = x.shape[dim]
            first = x.narrow(dim, 0, min(_STRIP, size))
            y.narrow(dim, 0, 1).copy_(self.original(first).narrow(dim, 0, 1))
            start = max(0, size - _STRIP)
            start -= start % self.stride  # keep the stride's phase
            last = self.original(x.narrow(dim, start, size - start))
            y.narrow(dim, y.shape[dim] - 1, 1).copy_(last.narrow(dim, last.shape[dim] - 1, 1))

    def _with_exact_border(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``_exact_border`` without in-place writes or size arithmetic, for graph export.

        A traced graph keeps Python integers computed from shapes as constants; slices
        counted from the end and concatenations stay valid for every input size, so one
        exported graph serves all tile sizes (inputs are multiples of the stride and at
        least ``_STRIP`` pixels, as the network requires anyway).
        """
        for dim in (2, 3):
            first = self.original(x.narrow(dim, 0, _STRIP)).narrow(dim, 0, 1)
            tail = x[:, :, -_STRIP:] if dim == 2 else x[:, :, :, -_STRIP:]
            last = self.original(tail)
            last = last[:, :, -1:] if dim == 2 else last[:, :, :, -1:]
            inner = y[:, :, 1:-1] if dim == 2 else y[:, :, :, 1:-1]
            y = torch.cat([first, inner, last], dim=dim)
        return y


def _chain_at(items: list[nn.Module], i: int) -> list[nn.Module] | None:
    """The fusable chain starting at items[i], if any."""
    chain = items[i : i + 3] if _is_nearest_x2(items[i]) else items[i : i + 2]
    return None if _chain_problem(chain) else chain


def fuse_linear_chains(layers: nn.Module) -> nn.Sequential:
    """The same layers (a Sequential's, in order) with every [nearest x2] conv-conv chain
    replaced by a LinearConvChain.

    A lone convolution after an upsampling is left alone: as a four-phase convolution it
    was measured slower on the CPU than the upsampling and convolution it replaces.
    """
    items = list(layers.children())
    out: list[nn.Module] = []
    i = 0
    while i < len(items):
        chain = _chain_at(items, i)
        if chain is None:
            out.append(items[i])
            i += 1
        else:
            out.append(LinearConvChain(chain))
            i += len(chain)
    return nn.Sequential(*out)
