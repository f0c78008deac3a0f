"""LR consistency: make the restored image agree with its input when reduced again.

A super-resolved image is only faithful if reducing it gives back the low-resolution
input. The network alone does not guarantee that: a small network drifts in brightness or
colour on scenes unlike its training data (measured on a bright, low-contrast NEON plot:
a -0.018 offset in luma, 1.9 dB below bicubic). One back-projection step (Irani & Peleg's
iterative back-projection; the consistency-enforcing module of Bahat & Michaeli, "Explorable
Super Resolution", CVPR 2020) removes that low-frequency error and keeps the restored high
frequencies:

    sr <- sr + enlarge(lr - reduce(sr))

``reduce`` is the degradation the model was trained for (antialiased bicubic reduction);
``enlarge`` is the bicubic upsampling that also makes the network's input. The step is
linear and differentiable, so a model can be trained with it in the loop and then spends
its capacity on detail only. Both operators are local (a few input pixels of support), so
tiles with an overlap give the same result as the whole image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reduce(image: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic reduction by ``scale`` ([B, C, H, W], H and W multiples of it).

    ``antialias=True`` widens the kernel by the scale, as MATLAB's ``imresize`` which made
    the classic benchmark LR images; without it, reducing aliases.
    """
    h, w = image.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"image size {h}x{w} is not a multiple of the scale {scale}")
    size = (h // scale, w // scale)
    return F.interpolate(image, size=size, mode="bicubic", antialias=True, align_corners=False)


def enlarge(image: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic enlargement by ``scale`` (torch's a=-0.75, align_corners=False, as the release)."""
    return F.interpolate(image, scale_factor=scale, mode="bicubic", align_corners=False)


def enforce_lr_consistency(sr: torch.Tensor, lr: torch.Tensor, scale: int) -> torch.Tensor:
    """One back-projection step of ``sr`` [B, C, sH, sW] towards ``lr`` [B, C, H, W].

    Both in the same value space (any affine map of it gives the same result). Computed in
    float32 whatever the inputs' precision: the correction is a small difference of two
    large images.
    """
    if sr.shape[-2:] != (lr.shape[-2] * scale, lr.shape[-1] * scale):
        raise ValueError(f"output {tuple(sr.shape[-2:])} is not x{scale} of the input {tuple(lr.shape[-2:])}")
    sr = sr.float()
    return sr + enlarge(lr.float() - reduce(sr, scale), scale)
