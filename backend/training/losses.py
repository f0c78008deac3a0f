"""Training losses: image losses (L1, SSIM, frequency) and the distillation MMD.

The paper names L1-type image losses and an MMD feature-distribution loss; SSIM and the
frequency (FFT) loss are our optional additions for a student trained without the
perceptual networks (LPIPS/VGG cannot be downloaded in this environment).
"""

from __future__ import annotations

import functools
import operator

import torch
import torch.nn.functional as F

from backend.metrics import ssim


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


MMD_BANDWIDTH_FACTORS = (0.5, 1.0, 2.0, 4.0)


def location_samples(
    features: torch.Tensor, n: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-location feature vectors [B,C,H,W] -> [n, C], drawn uniformly without replacement.

    The paper aligns feature *distributions*; treating every spatial location of every
    image as one sample of that distribution and subsampling keeps the kernel matrices at
    n x n (our choice: n = 1024 by default).
    """
    flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    if flat.shape[0] <= n:
        return flat
    index = torch.randperm(flat.shape[0], generator=generator)[:n].to(flat.device)
    return flat[index]


def mmd2(
    x: torch.Tensor, y: torch.Tensor, factors: tuple[float, ...] = MMD_BANDWIDTH_FACTORS
) -> torch.Tensor:
    """Multi-kernel Gaussian MMD^2 between samples x [n,C] and y [m,C] (biased V-statistic).

    k(a, b) = sum_f exp(-|a-b|^2 / (f * h)), h = the median pairwise squared distance of the
    pooled samples (median heuristic, detached). The biased estimator is exactly 0 for
    identical sample sets and never negative, which makes it a stable loss.
    """
    x, y = x.float(), y.float()
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    with torch.no_grad():
        off = d2[~torch.eye(d2.shape[0], dtype=torch.bool, device=d2.device)]
        h = off.median().clamp(min=1e-8) if off.numel() else torch.tensor(1.0, device=d2.device)
    k = functools.reduce(operator.add, (torch.exp(-d2 / (f * h)) for f in factors))
    n = x.shape[0]
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def feature_mmd(
    student: torch.Tensor,
    teacher: torch.Tensor,
    samples: int = 1024,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MMD^2 between the location distributions of two feature maps with the same channels."""
    return mmd2(location_samples(student, samples, generator), location_samples(teacher, samples, generator))


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


class PatchDiscriminator(torch.nn.Module):
    """A small spectrally-normalised PatchGAN for the optional adversarial term (ours)."""

    def __init__(self, channels: int = 3, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        sn = torch.nn.utils.parametrizations.spectral_norm
        mods: list[torch.nn.Module] = [sn(torch.nn.Conv2d(channels, width, 4, 2, 1)), torch.nn.LeakyReLU(0.2)]
        c = width
        for _ in range(layers - 1):
            mods += [sn(torch.nn.Conv2d(c, c * 2, 4, 2, 1)), torch.nn.LeakyReLU(0.2)]
            c *= 2
        mods.append(sn(torch.nn.Conv2d(c, 1, 3, 1, 1)))
        self.net = torch.nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
