"""The student's inference form: the same function, with its linear chains fused."""

from __future__ import annotations

import torch
from torch import nn

from backend.model.conv_fusion import fuse_linear_chains
from backend.model.global_context import GlobalContext, GlobalStatistics
from backend.model.student import SlimDiffSRStudent


class FusedStudent(nn.Module):
    """A SlimDiffSRStudent whose tiny-autoencoder slices run through LinearConvChains.

    Shares the UNet and merge convolutions with the student it wraps (the weight file's
    layout stays the student's); built per inference network, never trained.
    """

    def __init__(self, student: SlimDiffSRStudent) -> None:
        super().__init__()
        self.student = student
        self.config = student.config
        self.encoder = fuse_linear_chains(student.vae.encoder.layers[:-1])
        self.decoder = fuse_linear_chains(student.vae.decoder.layers[1:])

    def forward(
        self, image: torch.Tensor, context: GlobalContext | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``SlimDiffSRStudent.forward``: (z_denoised, image)."""
        z = self.student.denoise(self.encoder(image), context)
        out = self.decoder(z)
        return z, out + image if self.config.input_residual else out

    def record(self, image: torch.Tensor, joint: bool = False) -> GlobalStatistics:
        """The global statistics of ``image`` [B, C, H, W] (with ``joint``: a batch of crops
        of one image, gathered together into one row).

        Runs the encoder and the UNet only: every global operation is in the UNet, and the
        decoder, the costliest part at full resolution, has none.
        """
        context = GlobalContext.record(joint)
        self.student.denoise(self.encoder(image), context)
        return context.statistics()
