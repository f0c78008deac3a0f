"""Validation metrics on images in [0, 1]: PSNR and SSIM (RGB, or on Y as the paper)."""

from __future__ import annotations

import torch

from backend.training.losses import ssim


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of [B,3,H,W] in [0,1], scaled to [16,235]/255 as MATLAB's rgb2ycbcr.

    The paper reports PSNR/SSIM on Y of YCbCr, the SR literature's convention.
    """
    w = torch.tensor([65.481, 128.553, 24.966], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x * w).sum(dim=1, keepdim=True) + 16.0) / 255.0


def psnr(pred: torch.Tensor, target: torch.Tensor, *, border: int = 0) -> torch.Tensor:
    """Per-image PSNR in dB of [B,C,H,W] tensors in [0, 1]; ``border`` pixels are ignored."""
    if border:
        pred = pred[..., border:-border, border:-border]
        target = target[..., border:-border, border:-border]
    mse = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3)).clamp(min=1e-10)
    return 10.0 * torch.log10(1.0 / mse)


def ssim_index(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (11x11 Gaussian window, sigma 1.5) of tensors in [0, 1]."""
    return ssim(pred.float(), target.float(), reduction="none")
