"""Remote-sensing LR synthesis: what a real sensor product does to a scene, at moderate strength.

A model trained only on antialiased bicubic reduction learns that one kernel; real
low-resolution rasters come from optics and detectors (a point-spread function, often
slightly anisotropic), are sampled with or without a proper antialiasing filter (area
integration over the detector, resampling with or without a prefilter, point sampling at
an arbitrary phase), carry sensor noise and are often JPEG-compressed. Real-ESRGAN's
second-order pipeline (:mod:`backend.training.realesrgan`) models phone photographs
shared on the web: its blur, noise and JPEG ranges are several times what a sensor
product shows, and a small model trained on it learns to smooth everything.

:class:`SensorDegradation` draws, per image, from ranges tuned for remote sensing
(:class:`SensorSettings`, after BSRGAN's random-order idea but one pass, no resizing
chains):

* with ``clean_prob``: the benchmark degradation alone (antialiased bicubic reduction);
* otherwise: a Gaussian PSF (isotropic, or anisotropic with a random orientation) with
  ``sigma`` in ``psf_sigma`` x scale HR pixels, applied with ``psf_prob``; a reduction
  chosen among area, antialiased bicubic/bilinear and point-sampled bicubic/bilinear
  (``F.interpolate`` without antialiasing, as ``cv2.resize`` and undersampled sensors);
  the point-sampled modes at a random sub-pixel sampling phase (``shift_prob``); Gaussian
  or signal-dependent (Poisson-like) noise up to ``noise_max`` / 255; JPEG at a quality in
  ``jpeg_quality`` with ``jpeg_prob``; 8-bit quantization.

:func:`eval_degradation` is the fixed, documented "moderate realistic" degradation the
model card reports (one recipe, no randomness).

All functions take and return ``[B, C, H, W]`` float tensors in [0, 1]; every random
number comes from the caller's ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from backend.model.lr_consistency import reduce
from backend.training.blur_kernels import choice, family_kernel, uniform

REDUCTIONS = ("area", "bicubic", "bilinear", "bicubic-point", "bilinear-point")


@dataclass(frozen=True)
class SensorSettings:
    """Probabilities and ranges of :class:`SensorDegradation` (see the module docstring)."""

    clean_prob: float = 0.25
    psf_prob: float = 0.75
    aniso_prob: float = 0.4
    psf_sigma: tuple[float, float] = (0.2, 0.8)  # x scale, in HR pixels
    aniso_ratio: tuple[float, float] = (0.5, 1.0)  # minor / major sigma
    reduction_probs: tuple[float, ...] = (0.25, 0.25, 0.15, 0.2, 0.15)  # REDUCTIONS
    shift_prob: float = 0.5
    noise_prob: float = 0.6
    poisson_prob: float = 0.5  # of the noisy images, signal-dependent noise
    noise_max: float = 4.0  # sigma in 8-bit levels (Poisson-like: at mid-grey)
    gray_noise_prob: float = 0.3
    jpeg_prob: float = 0.4
    jpeg_quality: tuple[float, float] = (70.0, 95.0)


def gaussian_psf(sigma_major: float, ratio: float, theta: float) -> torch.Tensor:
    """Normalized Gaussian kernel; odd size covering +-3 sigma."""
    radius = max(1, math.ceil(3 * sigma_major))
    return family_kernel("aniso", 2 * radius + 1, sigma_major, sigma_major * ratio, theta)


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of ``x`` [B,C,H,W] with one kernel (reflect borders)."""
    c = x.shape[1]
    p = kernel.shape[-1] // 2
    mode = "reflect" if p < min(x.shape[-2:]) else "replicate"
    weight = kernel.to(x).expand(c, 1, *kernel.shape)
    return F.conv2d(F.pad(x, (p, p, p, p), mode=mode), weight, groups=c)


def reduce_by(
    x: torch.Tensor, scale: int, mode: str, phase: tuple[float, float] = (0.0, 0.0)
) -> torch.Tensor:
    """Reduce ``x`` by ``scale`` with one of :data:`REDUCTIONS`.

    ``phase`` (HR pixels, each within +-(scale-1)/2) moves the sampling points of the
    point-sampled modes away from the block centres, as a sensor grid that does not line
    up with the scene; the prefiltered modes ignore it.
    """
    h, w = x.shape[-2:]
    size = (h // scale, w // scale)
    if mode == "area":
        return F.avg_pool2d(x, scale)
    if mode == "bicubic":
        return reduce(x, scale)
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    if mode not in ("bicubic-point", "bilinear-point"):
        raise ValueError(f"unknown reduction '{mode}'; use one of {', '.join(REDUCTIONS)}")
    interp = mode.split("-")[0]
    if phase == (0.0, 0.0):
        return F.interpolate(x, size=size, mode=interp, antialias=False, align_corners=False)
    # sample HR positions scale*i + (scale-1)/2 + phase, in grid_sample's [-1, 1] coordinates
    ys = (torch.arange(size[0], dtype=torch.float64) * scale + (scale - 1) / 2 + phase[0] + 0.5) / h * 2 - 1
    xs = (torch.arange(size[1], dtype=torch.float64) * scale + (scale - 1) / 2 + phase[1] + 0.5) / w * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack((gx, gy), dim=-1).to(x).expand(x.shape[0], *gx.shape, 2)
    return F.grid_sample(x, grid, mode=interp, padding_mode="border", align_corners=False)


def add_noise(
    x: torch.Tensor, g: torch.Generator, sigma: float, poisson: bool, gray: bool
) -> torch.Tensor:
    """Gaussian noise of ``sigma`` (in [0, 1] units); Poisson-like: scaled by sqrt(2 x), so
    ``sigma`` holds at mid-grey, less in shadows, more in highlights."""
    shape = (x.shape[0], 1, *x.shape[-2:]) if gray else x.shape
    noise = torch.randn(shape, generator=g).to(x) * sigma
    if poisson:
        noise = noise * (2 * x.clamp(0, 1)).sqrt()
    return x + noise


def jpeg(x: torch.Tensor, quality: float) -> torch.Tensor:
    """JPEG round trip at ``quality`` (kornia's codec: standard tables, 4:2:0 chroma).

    kornia needs sides that are multiples of 16; the image is edge-padded and cropped back.
    """
    from kornia.enhance import jpeg_codec_differentiable

    h, w = x.shape[-2:]
    ph, pw = (-h) % 16, (-w) % 16
    padded = F.pad(x.clamp(0, 1), (0, pw, 0, ph), mode="replicate") if ph or pw else x.clamp(0, 1)
    q = torch.full((x.shape[0],), float(quality)).to(x)
    return jpeg_codec_differentiable(padded, q)[..., :h, :w].clamp(0, 1)


def quantize(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


class SensorDegradation:
    """Callable ``(hr [B,C,H,W] in [0,1], generator) -> lr [B,C,H/s,W/s]``, drawn per image."""

    def __init__(self, scale: int, settings: SensorSettings | None = None) -> None:
        self.scale = scale
        self.settings = settings or SensorSettings()

    def describe(self) -> dict[str, object]:
        return {"kind": "sensor", "scale": self.scale, **asdict(self.settings)}

    def one(self, hr: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One image [1,C,H,W] -> its LR."""
        s, st = self.scale, self.settings
        if uniform(g, 0, 1) < st.clean_prob:
            return quantize(reduce(hr, s))
        x = hr
        if uniform(g, 0, 1) < st.psf_prob:
            sigma = uniform(g, *st.psf_sigma) * s
            ratio = uniform(g, *st.aniso_ratio) if uniform(g, 0, 1) < st.aniso_prob else 1.0
            x = blur(x, gaussian_psf(sigma, ratio, uniform(g, 0, math.pi)))
        mode = REDUCTIONS[choice(g, st.reduction_probs)]
        phase = (0.0, 0.0)
        if mode.endswith("-point") and uniform(g, 0, 1) < st.shift_prob:
            half = (s - 1) / 2
            phase = (uniform(g, -half, half), uniform(g, -half, half))
        x = reduce_by(x, s, mode, phase)
        if uniform(g, 0, 1) < st.noise_prob:
            sigma = uniform(g, 0.5, st.noise_max) / 255
            poisson = uniform(g, 0, 1) < st.poisson_prob
            x = add_noise(x, g, sigma, poisson, uniform(g, 0, 1) < st.gray_noise_prob)
        if uniform(g, 0, 1) < st.jpeg_prob:
            x = jpeg(x, uniform(g, *st.jpeg_quality))
        return quantize(x)

    def __call__(self, hr: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        g = generator or torch.Generator().manual_seed(0)
        h, w = hr.shape[-2:]
        if h % self.scale or w % self.scale:
            raise ValueError(f"HR size {h}x{w} is not a multiple of the scale {self.scale}")
        out = torch.cat([self.one(hr[i : i + 1].float(), g) for i in range(hr.shape[0])])
        return out.to(hr.dtype)


# The model card's "moderate realistic" evaluation degradation, fixed: a slightly
# anisotropic Gaussian PSF (sigma 0.5 x scale along 30 degrees, 0.35 x scale across),
# area reduction (detector integration), Gaussian noise of 2/255 with a fixed seed,
# JPEG quality 85, 8-bit quantization.
EVAL_PSF = (0.5, 0.7, math.pi / 6)  # sigma (x scale), minor/major ratio, orientation
EVAL_NOISE = 2.0  # 8-bit levels
EVAL_JPEG = 85.0


def eval_degradation(hr: torch.Tensor, scale: int, seed: int = 0) -> torch.Tensor:
    """The fixed moderate realistic degradation of the evaluation, [B,C,H,W] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    sigma, ratio, theta = EVAL_PSF
    x = blur(hr.float(), gaussian_psf(sigma * scale, ratio, theta))
    x = reduce_by(x, scale, "area")
    x = add_noise(x, g, EVAL_NOISE / 255, poisson=False, gray=False)
    return quantize(jpeg(x, EVAL_JPEG)).to(hr.dtype)
