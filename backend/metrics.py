"""Image quality metrics on images in [0, 1]: PSNR and SSIM (RGB, or on Y as the paper).

One implementation for validation during training, the model card's evaluation and the
QGIS quality check, so their numbers are comparable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights for RGB in [0, 1], giving Y in [16, 235] (MATLAB's rgb2ycbcr).
Y_WEIGHTS = (65.481, 128.553, 24.966)


def gaussian_window(size: int = 11, sigma: float = 1.5, *, device=None, dtype=torch.float32) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
    reduction: str = "mean",
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) with a separable Gaussian window.

    Computed per channel with 'valid' filtering (no padding), as the reference
    implementation; ``reduction='none'`` returns one value per image.
    """
    c = pred.shape[1]
    g = gaussian_window(window, sigma, device=pred.device, dtype=pred.dtype)
    gx = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    gy = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, gx, groups=c), gy, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(pred), blur(target)
    sxx = blur(pred * pred) - mu_x**2
    syy = blur(target * target) - mu_y**2
    sxy = blur(pred * target) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    per_image = s.flatten(1).mean(dim=1)
    return per_image.mean() if reduction == "mean" else per_image


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of [B,3,H,W] in [0,1], scaled to [16,235]/255 as MATLAB's rgb2ycbcr.

    The paper reports PSNR/SSIM on Y of YCbCr, the SR literature's convention.
    """
    w = torch.tensor(Y_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
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
