"""The paper's lightweight replacements for the UNet's 3x3 ResNet convolutions.

Both blocks split a dense 3x3 convolution (Cin*Cout*9 weights) into cheap depthwise
filters whose outputs are mixed by image-level weights from a small MLP on the globally
pooled input, followed by a low-rank 1x1 projection (Cin -> Cin/4 -> Cout).
"""

from __future__ import annotations

import torch
from torch import nn

from backend.model.global_context import GlobalContext, spatial_mean


def _depthwise(channels: int, kernel: tuple[int, int]) -> nn.Sequential:
    pad = (kernel[0] // 2, kernel[1] // 2)
    return nn.Sequential(nn.Conv2d(channels, channels, kernel, padding=pad, groups=channels, bias=False))


def _gate(cin: int, hidden: int, outputs: int) -> nn.Sequential:
    """Image-level branch weights in (0, 1) from the spatial mean of the input."""
    return nn.Sequential(
        nn.Linear(cin, hidden, bias=False),
        nn.ReLU(),
        nn.Linear(hidden, outputs),
        nn.Sigmoid(),
    )


def _branch_weights(gate: nn.Sequential, x: torch.Tensor, context: GlobalContext | None) -> torch.Tensor:
    """The gate on the image's spatial mean (the whole image's when ``context`` holds it)."""
    return gate(spatial_mean(x, context))[:, :, None, None]


class FrequencySeparableConv(nn.Module):
    """FSC: a low-pass depthwise filter, a high-pass one on the residual, gated sum.

    lo = low(x); hi = high(x - lo); out = bottleneck(w0 * lo + w1 * hi).
    """

    def __init__(self, cin: int, cout: int, reduction: float = 0.25, mlp_hidden: int = 8) -> None:
        super().__init__()
        mid = int(cin * reduction)
        self.low_branch = _depthwise(cin, (3, 3))
        self.high_branch = _depthwise(cin, (3, 3))
        self.mlp = _gate(cin, mlp_hidden, 2)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid, cout, 1, bias=False),
        )

    def forward(self, x: torch.Tensor, context: GlobalContext | None = None) -> torch.Tensor:
        low = self.low_branch(x)
        high = self.high_branch(x - low)
        w = _branch_weights(self.mlp, x, context)
        # w0 * low + w1 * high without two more full-size temporaries.
        return self.bottleneck(low.mul_(w[:, 0:1]).addcmul_(high, w[:, 1:2]))


class DirectionSeparableConv(nn.Module):
    """DSC: vertical (3x1), horizontal (1x3) and their cascade, gated, low-rank projected.

    fh = h(x); fhv = v(fh); fv = v(x) (the same v filter twice, as in the release).
    """

    def __init__(self, cin: int, cout: int, reduction: float = 0.25, mlp_divisor: int = 8) -> None:
        super().__init__()
        mid = int(cin * reduction)
        self.h_conv = _depthwise(cin, (3, 1))
        self.v_conv = _depthwise(cin, (1, 3))
        self.conv_reduce = nn.Conv2d(cin, mid, 1, bias=False)
        self.conv_expand = nn.Conv2d(mid, cout, 1, bias=False)
        self.mlp = _gate(cin, cin // mlp_divisor, 3)

    def forward(self, x: torch.Tensor, context: GlobalContext | None = None) -> torch.Tensor:
        fh = self.h_conv(x)
        w = _branch_weights(self.mlp, x, context)
        # w0 fh + w1 v(fh) + w2 v(x) = w0 fh + v(w1 fh + w2 x): v is linear (no bias) and
        # the weights are constant over the image, so one v pass serves both branches.
        both = self.v_conv(torch.addcmul(fh * w[:, 1:2], x, w[:, 2:3]))
        return self.conv_expand(self.conv_reduce(both.addcmul_(fh, w[:, 0:1])))
