"""The depth-pruned SD-Turbo UNet body of the student (no time, no text conditioning)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backend.model.config import StudentConfig
from backend.model.global_context import GlobalContext, GlobalGroupNorm
from backend.model.unet_blocks import DownBlock, MidBlock, UpBlock


class TimestepEmbedding(nn.Module):
    """Unused by the student; present so release checkpoints load strictly."""

    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(cin, dim)
        self.linear_2 = nn.Linear(dim, dim)


class PrunedUNet(nn.Module):
    """Down levels -> mid ResNet -> up levels with a local (per-call) skip stack.

    The first skip is the block input itself (the merge_conv1 output), as in SD's UNet
    where it is the ``conv_in`` output.
    """

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        widths = cfg.unet_channels[:-1]
        mid_width = cfg.unet_channels[-1]
        n = cfg.layers_per_block
        if cfg.keep_unused:
            self.conv_in = nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)
            self.time_embedding = TimestepEmbedding(widths[0], widths[0] * 4)
            self.conv_out = nn.Conv2d(widths[0], cfg.latent_channels, 3, padding=1)

        skip_channels = [widths[0]]
        self.down_blocks = nn.ModuleList()
        cin = widths[0]
        for level, width in enumerate(widths):
            last = level == len(widths) - 1
            self.down_blocks.append(DownBlock(cin, width, n, not last, cfg))
            skip_channels += [width] * (n + (0 if last else 1))
            cin = width

        self.mid_block = MidBlock(widths[-1], mid_width, cfg)

        self.up_blocks = nn.ModuleList()
        cin = mid_width
        for level, width in enumerate(reversed(widths)):
            last = level == len(widths) - 1
            pops = [skip_channels.pop() for _ in range(n + 1)]
            self.up_blocks.append(UpBlock(cin, pops, width, not last, cfg))
            cin = width
        self.conv_norm_out = GlobalGroupNorm(cfg.norm_groups, widths[0], eps=cfg.resnet_eps)

    def forward(self, x: torch.Tensor, context: GlobalContext | None = None) -> torch.Tensor:
        """``context``: where the global operations take their statistics (None: from ``x``)."""
        skips = [x]
        for block in self.down_blocks:
            x = block(x, skips, context)
        x = self.mid_block(x, context)
        for block in self.up_blocks:
            x = block(x, skips, context)
        return F.silu(self.conv_norm_out(x, context), inplace=True)
