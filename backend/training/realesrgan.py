"""Real-ESRGAN's second-order degradation, the LR synthesis the paper trains with.

HR -> [blur -> random resize -> Gaussian or Poisson noise -> JPEG] twice -> final stage
(resize to HR/scale + sinc filter, and JPEG, in random order) -> 8-bit quantization.
The default ranges are Real-ESRGAN's published x4 settings, which the paper uses
unchanged (:class:`RealESRGANSettings`). Our choices: the random resize factor and
interpolation mode are drawn once per batch (tensors of one batch must share a size, as in
the reference's batched GPU pipeline); kernels, noise and JPEG quality are drawn per
image; JPEG is kornia's differentiable codec (standard tables, 8x8 DCT, quality scaling)
instead of an encoder library, so the whole pipeline stays in torch on any device; the
reference's optional USM sharpening of the ground truth is not applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from backend.training.blur_kernels import (
    KERNEL_FAMILIES,
    choice,
    pad_kernel,
    random_family_kernel,
    sinc_kernel,
    uniform,
)
from backend.training.degradations import RandomDegradation

RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass(frozen=True)
class StageSettings:
    blur_prob: float
    kernel_probs: tuple[float, ...]
    sinc_prob: float
    blur_sigma: tuple[float, float]
    betag: tuple[float, float]
    betap: tuple[float, float]
    resize_probs: tuple[float, float, float]  # up, down, keep
    resize_range: tuple[float, float]
    gaussian_noise_prob: float
    noise_range: tuple[float, float]  # sigma in 8-bit levels
    poisson_scale_range: tuple[float, float]
    gray_noise_prob: float
    jpeg_range: tuple[float, float]


# Real-ESRGAN x4plus degradation ranges (its training options file); immutable.
FIRST_STAGE = StageSettings(
    blur_prob=1.0,
    kernel_probs=(0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
    sinc_prob=0.1,
    blur_sigma=(0.2, 3.0),
    betag=(0.5, 4.0),
    betap=(1.0, 2.0),
    resize_probs=(0.2, 0.7, 0.1),
    resize_range=(0.15, 1.5),
    gaussian_noise_prob=0.5,
    noise_range=(1.0, 30.0),
    poisson_scale_range=(0.05, 3.0),
    gray_noise_prob=0.4,
    jpeg_range=(30.0, 95.0),
)
# The second stage is milder: less blur, smaller resizes, less noise.
SECOND_STAGE = replace(
    FIRST_STAGE,
    blur_prob=0.8,
    blur_sigma=(0.2, 1.5),
    resize_probs=(0.3, 0.4, 0.3),
    resize_range=(0.3, 1.2),
    noise_range=(1.0, 25.0),
    poisson_scale_range=(0.05, 2.5),
)


@dataclass(frozen=True)
class RealESRGANSettings:
    """The paper's LR synthesis: Real-ESRGAN's two stages and final step."""

    first: StageSettings = FIRST_STAGE
    second: StageSettings = SECOND_STAGE
    kernel_sizes: tuple[int, ...] = tuple(range(7, 22, 2))
    final_sinc_prob: float = 0.8


def filter_per_image(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve image b of ``x`` [B,C,H,W] with ``kernels[b]`` [B,k,k] (reflect borders)."""
    b, c, h, w = x.shape
    k = kernels.shape[-1]
    p = k // 2
    mode = "reflect" if p < min(h, w) else "replicate"
    padded = F.pad(x.reshape(1, b * c, h, w), (p, p, p, p), mode=mode)
    weight = kernels.to(x).repeat_interleave(c, dim=0).unsqueeze(1)
    return F.conv2d(padded, weight, groups=b * c).reshape(b, c, h, w)


def gaussian_noise(x: torch.Tensor, g: torch.Generator, stage: StageSettings) -> torch.Tensor:
    b, c, h, w = x.shape
    noise = torch.empty_like(x)
    for i in range(b):
        sigma = uniform(g, *stage.noise_range) / 255.0
        if uniform(g, 0, 1) < stage.gray_noise_prob:
            noise[i] = torch.randn((1, h, w), generator=g).to(x) * sigma
        else:
            noise[i] = torch.randn((c, h, w), generator=g).to(x) * sigma
    return x + noise


def poisson_noise(x: torch.Tensor, g: torch.Generator, stage: StageSettings) -> torch.Tensor:
    """Shot noise: counts ~ Poisson(x * levels) with ``levels`` the next power of two above
    the number of distinct 8-bit values in the image (as the reference), scaled."""
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        scale = uniform(g, *stage.poisson_scale_range)
        gray = uniform(g, 0, 1) < stage.gray_noise_prob
        img = x[i : i + 1]
        if gray:
            img = 0.299 * img[:, 0:1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3]
        img = (img.clamp(0, 1) * 255).round() / 255
        levels = 2 ** math.ceil(math.log2(max(2, len(torch.unique(img)))))
        counts = torch.poisson((img * levels).cpu().double(), generator=g).to(img)
        noise = (counts / levels - img) * scale
        out[i] = x[i] + noise[0]
    return out


def jpeg(x: torch.Tensor, g: torch.Generator, quality_range: tuple[float, float]) -> torch.Tensor:
    from kornia.enhance import jpeg_codec_differentiable

    quality = torch.tensor([uniform(g, *quality_range) for _ in range(x.shape[0])]).to(x)
    return jpeg_codec_differentiable(x.clamp(0, 1), quality).clamp(0, 1)


class RealESRGANDegradation(RandomDegradation[RealESRGANSettings]):
    """Real-ESRGAN's second-order pipeline on RGB batches; seeded, torch only."""

    kind = "realesrgan-second-order"

    def __init__(self, scale: int, settings: RealESRGANSettings | None = None) -> None:
        super().__init__(scale, settings or RealESRGANSettings())

    def _kernels(self, g: torch.Generator, n: int, stage: StageSettings) -> torch.Tensor:
        size_max = max(self.settings.kernel_sizes)
        out = []
        for _ in range(n):
            size = self.settings.kernel_sizes[
                int(torch.randint(len(self.settings.kernel_sizes), (), generator=g))
            ]
            if uniform(g, 0, 1) < stage.sinc_prob:
                low = math.pi / 3 if size < 13 else math.pi / 5
                k = sinc_kernel(size, uniform(g, low, math.pi))
            else:
                k = random_family_kernel(
                    g, size, KERNEL_FAMILIES, stage.kernel_probs, stage.blur_sigma, stage.betag, stage.betap
                )
            out.append(pad_kernel(k, size_max))
        return torch.stack(out)

    def _stage(
        self, x: torch.Tensor, g: torch.Generator, stage: StageSettings, with_jpeg: bool
    ) -> torch.Tensor:
        """Blur, random resize, noise and (first stage only) JPEG.

        The second stage's JPEG belongs to the final step, where its order with the final
        resize + sinc is random, as in the reference.
        """
        b = x.shape[0]
        if uniform(g, 0, 1) < stage.blur_prob:
            x = filter_per_image(x, self._kernels(g, b, stage))
        direction = choice(g, stage.resize_probs)
        up, down = uniform(g, 1.0, stage.resize_range[1]), uniform(g, stage.resize_range[0], 1.0)
        factor = (up, down, 1.0)[direction]
        mode = RESIZE_MODES[int(torch.randint(3, (), generator=g))]
        if factor != 1.0:
            size = (max(2, round(x.shape[-2] * factor)), max(2, round(x.shape[-1] * factor)))
            x = F.interpolate(x, size=size, mode=mode, **({} if mode == "area" else {"align_corners": False}))
        if uniform(g, 0, 1) < stage.gaussian_noise_prob:
            x = gaussian_noise(x, g, stage)
        else:
            x = poisson_noise(x, g, stage)
        return jpeg(x, g, stage.jpeg_range) if with_jpeg else x

    def _final_sinc(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        size_max = max(self.settings.kernel_sizes)
        kernels = []
        for _ in range(x.shape[0]):
            if uniform(g, 0, 1) < self.settings.final_sinc_prob:
                size = self.settings.kernel_sizes[
                    int(torch.randint(len(self.settings.kernel_sizes), (), generator=g))
                ]
                kernels.append(pad_kernel(sinc_kernel(size, uniform(g, math.pi / 3, math.pi)), size_max))
            else:  # a unit pulse: no filtering
                pulse = torch.zeros(size_max, size_max)
                pulse[size_max // 2, size_max // 2] = 1.0
                kernels.append(pulse)
        return filter_per_image(x, torch.stack(kernels))

    def degrade(self, hr: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        h, w = hr.shape[-2:]
        lr_size = (h // self.scale, w // self.scale)
        x = self._stage(hr.float(), g, self.settings.first, with_jpeg=True)
        x = self._stage(x, g, self.settings.second, with_jpeg=False)

        def resize_sinc(y: torch.Tensor) -> torch.Tensor:
            mode = RESIZE_MODES[int(torch.randint(3, (), generator=g))]
            extra = {} if mode == "area" else {"align_corners": False}
            y = F.interpolate(y, size=lr_size, mode=mode, **extra)
            return self._final_sinc(y, g)

        if uniform(g, 0, 1) < 0.5:
            x = jpeg(resize_sinc(x), g, self.settings.second.jpeg_range)
        else:
            x = resize_sinc(jpeg(x, g, self.settings.second.jpeg_range))
        return ((x.clamp(0, 1) * 255).round() / 255).to(hr.dtype)
