"""The SlimDiffSR student: encoder slice -> merge conv -> pruned UNet -> merge conv -> decoder slice."""

from __future__ import annotations

import torch
from torch import nn

from backend.model.config import StudentConfig
from backend.model.global_context import GlobalContext
from backend.model.pruned_unet import PrunedUNet
from backend.model.tiny_autoencoder import TinyAutoencoder


class SlimDiffSRStudent(nn.Module):
    """One forward pass maps a bicubic-upsampled image in [-1, 1] to the restored image.

    Input height and width must be multiples of ``config.downscale`` (32 for the paper's
    student); the inference wrapper pads. Returns ``(z_denoised, image)``: the
    latent-resolution feature the paper distils with MMD, and the output image (not
    clamped, in about [-1, 1]).
    """

    def __init__(self, config: StudentConfig | None = None) -> None:
        super().__init__()
        self.config = config or StudentConfig()
        self.config.validate()
        cfg = self.config
        self.unet = PrunedUNet(cfg)
        self.vae = TinyAutoencoder(cfg)
        self.merge_conv1 = nn.Conv2d(cfg.vae_channels, cfg.unet_channels[0], 3, padding=1)
        self.merge_conv2 = nn.Conv2d(cfg.unet_channels[0], cfg.vae_channels, 3, padding=1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """All encoder layers but the latent conv; the release applies no (x+1)/2 shift."""
        return self.vae.encoder.layers[:-1](image)

    def denoise(self, features: torch.Tensor, context: GlobalContext | None = None) -> torch.Tensor:
        """merge_conv1 -> pruned UNet -> merge_conv2: the distilled ``z_denoised``.

        The UNet holds every global operation of the student; ``context`` says where they
        take their statistics (:mod:`backend.model.global_context`; None: from this input).
        """
        return self.merge_conv2(self.unet(self.merge_conv1(features), context))

    def decode(self, z_denoised: torch.Tensor) -> torch.Tensor:
        """Decoder without its latent conv, tanh clamp and final *2-1 (as released)."""
        return self.vae.decoder.layers[1:](z_denoised)

    def forward(
        self, image: torch.Tensor, context: GlobalContext | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.denoise(self.encode(image), context)
        out = self.decode(z)
        return z, out + image if self.config.input_residual else out
