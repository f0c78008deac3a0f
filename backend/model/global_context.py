"""Statistics of the student's global operations, gathered once per image and shared by tiles.

Four operations of the student read the whole input, not a neighbourhood: the UNet's
GroupNorms (mean and variance per group), the FSC/DSC branch gates (the spatial mean of
their input) and QGAM (its learned queries gather a context from every token). Run on a
tile, each sees only the tile, so the picture depends on the tile size. The cure is to
compute those statistics once for the whole image and let every tile use them:

* a *recording* pass (:meth:`GlobalContext.record`) runs the network on the whole image,
  or on a batch of crops of it reduced together as if they were one image (``joint``),
  and keeps every statistic in the order the network computes them;
* a *frozen* pass (:meth:`GlobalContext.frozen`) runs a tile with those statistics read
  back in the same order.

The statistics travel as one float32 matrix (:class:`GlobalStatistics`, a row per image),
so an exported graph takes them as a single extra input whatever the architecture.
Without a context (``None``) every operation computes its statistics from its own input,
exactly as the authors' release does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GlobalStatistics:
    """Every statistic of the student's global operations, for one or more images.

    ``values``: float32 [images, size], each row the statistics of one image concatenated
    in the order the network computes them (only the network that recorded them can read
    them back).
    """

    values: torch.Tensor

    @property
    def images(self) -> int:
        return int(self.values.shape[0])

    @property
    def size(self) -> int:
        return int(self.values.shape[1])

    def for_batch(self, tiles: int) -> torch.Tensor:
        """Rows for a batch of ``tiles`` tiles of every image, tile-major (tile i of image g
        at row ``i * images + g``), the order in which the engine stacks band groups."""
        return self.values.repeat(tiles, 1)


class GlobalContext:
    """Where the global operations of one forward pass take their statistics from.

    Use :meth:`record` or :meth:`frozen`; one instance serves one forward pass.
    """

    def __init__(self, frozen: torch.Tensor | None, joint: bool) -> None:
        self.joint = joint
        self._frozen = frozen
        self._offset = 0
        self._recorded: list[torch.Tensor] = []

    @classmethod
    def record(cls, joint: bool = False) -> GlobalContext:
        """Compute the statistics from the input and keep them: per batch item, or with
        ``joint`` over the whole batch together (crops of one image: one row)."""
        return cls(None, joint)

    @classmethod
    def frozen(cls, values: torch.Tensor) -> GlobalContext:
        """Read every statistic from ``values`` ([batch, size], one row per batch item)."""
        return cls(values, False)

    @property
    def recording(self) -> bool:
        return self._frozen is None

    def statistic(self, shape: tuple[int, ...], compute: Callable[[bool], torch.Tensor]) -> torch.Tensor:
        """The next statistic, float32 [rows, *shape] with one row per batch item, or a
        single row for the whole batch (a joint recording; it broadcasts).

        ``compute(joint)`` computes it from the operation's own input (per batch item, or
        over the whole batch with ``joint``) when recording; frozen, it is read back.
        """
        if self._frozen is not None:
            n = math.prod(shape)
            value = self._frozen[:, self._offset : self._offset + n]
            self._offset += n
            return value.reshape(-1, *shape)
        value = compute(self.joint).float()
        self._recorded.append(value.flatten(1))
        return value

    def statistics(self) -> GlobalStatistics:
        """What a recording pass gathered."""
        if not self._recorded:
            raise RuntimeError("nothing was recorded (a frozen context, or no pass yet)")
        return GlobalStatistics(torch.cat(self._recorded, dim=1))

    def check_consumed(self) -> None:
        """Raise ValueError unless a frozen pass read exactly all of its statistics (they
        were recorded by this same network)."""
        if self._frozen is not None and self._offset != self._frozen.shape[1]:
            raise ValueError(
                f"the network read {self._offset} statistics, {self._frozen.shape[1]} were given; "
                "they were recorded by another network"
            )


def _by_image(x: torch.Tensor, joint: bool) -> torch.Tensor:
    """[B, ...] -> [images, crops, ...]: [1, B, ...] when the batch is crops of one image,
    else [B, 1, ...]."""
    return x.unsqueeze(0) if joint else x.unsqueeze(1)


def spatial_mean(x: torch.Tensor, context: GlobalContext | None) -> torch.Tensor:
    """Per-channel mean over the image, [B, C] in ``x``'s dtype (the FSC/DSC gates' input).

    Accumulated in float32 (a bf16 sum over a large tile loses digits) without a float32
    copy of the feature map.
    """
    if context is None:
        return x.mean(dim=(2, 3), dtype=torch.float32).to(x.dtype)

    def compute(joint: bool) -> torch.Tensor:
        return _by_image(x.mean(dim=(2, 3), dtype=torch.float32), joint).mean(dim=1)

    return context.statistic((x.shape[1],), compute).to(x.dtype)


class GlobalGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` whose group mean and variance can come from a :class:`GlobalContext`.

    Same parameters and state-dict keys as ``nn.GroupNorm``; without a context it is
    ``nn.GroupNorm``.
    """

    def forward(self, x: torch.Tensor, context: GlobalContext | None = None) -> torch.Tensor:
        if context is None:
            return super().forward(x)
        c, g = x.shape[1], self.num_groups

        def compute(joint: bool) -> torch.Tensor:
            # [images, crops, groups, n] -> [images, groups, crops * n]
            grouped = _by_image(x.float().flatten(2).unflatten(1, (g, c // g)).flatten(2), joint)
            var, mean = torch.var_mean(grouped.transpose(1, 2).flatten(2), dim=-1, correction=0)
            return torch.stack([mean, var], dim=-1)

        stats = context.statistic((g, 2), compute)
        mean, var = stats.unbind(-1)  # [rows, G]
        # group -> its channels (an expand, not repeat_interleave: exports as plain ops)
        rstd = torch.rsqrt(var + self.eps).unsqueeze(-1).expand(-1, -1, c // g).flatten(1)
        mean = mean.unsqueeze(-1).expand(-1, -1, c // g).flatten(1)
        scale = rstd if self.weight is None else rstd * self.weight
        shift = -mean * scale if self.bias is None else self.bias - mean * scale
        # One pass over x, in its memory format: x * scale + shift per channel.
        return torch.addcmul(shift[:, :, None, None].to(x.dtype), x, scale[:, :, None, None].to(x.dtype))
