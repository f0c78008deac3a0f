"""Training losses: image losses (L1, SSIM, frequency) and the distillation MMD.

The paper names L1-type image losses and an MMD feature-distribution loss; SSIM and the
frequency (FFT) loss are our optional additions for a student trained without the
perceptual networks (LPIPS/VGG cannot be downloaded in this environment).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_window(size: int = 11, sigma: float = 1.5, *, device=None, dtype=torch.float32) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, *, data_range: float = 1.0, window: int = 11,
         sigma: float = 1.5, reduction: str = "mean") -> torch.Tensor:
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


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """1 - SSIM; the training images are in [-1, 1], hence the data range 2."""
    return 1.0 - ssim(pred.float(), target.float(), data_range=data_range)


def fft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 distance between orthonormal 2-D spectra (real and imaginary parts).

    Penalises missing high frequencies that a pixel L1 loss tolerates (blur), in the
    spirit of the focal-frequency losses used by recent SR work; our choice.
    """
    a = torch.fft.rfft2(pred.float(), norm="ortho")
    b = torch.fft.rfft2(target.float(), norm="ortho")
    return (torch.view_as_real(a) - torch.view_as_real(b)).abs().mean()
