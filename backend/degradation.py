"""How imagery becomes low-resolution: the operators that synthesize LR images.

One definition for the three places that degrade a high-resolution image on purpose:
training (:mod:`backend.training.sensor_degradation` draws random parameters for these
operators), the model card's evaluation (``backend.default_model evaluate``) and the
Quality Check on a user's own imagery (:mod:`backend.quality`).

A real coarse raster is not an antialiased bicubic reduction of a sharper one: optics and
detectors blur it (a point-spread function, often slightly anisotropic), it is sampled
with or without a proper antialiasing filter (area integration over the detector,
resampling with or without a prefilter, point sampling at an arbitrary phase), it carries
sensor noise and is often JPEG-compressed. :data:`REDUCTIONS` names the sampling
variants; :func:`realistic` is the fixed, documented "moderate realistic" degradation
the model card and the Quality Check report.

Images are ``[B, C, H, W]`` float tensors in [0, 1]; nothing here is random unless a
``torch.Generator`` is passed.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from backend.model.lr_consistency import reduce

REDUCTIONS = ("area", "bicubic", "bilinear", "bicubic-point", "bilinear-point")
"""``area``: mean over each scale x scale block (detector integration, GDAL ``average``);
``bicubic``/``bilinear``: antialiased (the kernel widened by the scale, as MATLAB and
Pillow); ``*-point``: the kernel applied at the sampling points only, no antialiasing
(``cv2.resize``, GDAL's ``cubic``/``bilinear`` overviews, undersampled sensors)."""


def gaussian_grid(size: int, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """``x^T S^-1 x`` on a size x size grid centred on its middle, ``S = R diag(sx^2, sy^2) R^T``
    (R a rotation by ``theta``): the exponent of an (an)isotropic Gaussian."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    u = c * xx + s * yy
    v = -s * xx + c * yy
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def gaussian_psf(sigma_major: float, ratio: float = 1.0, theta: float = 0.0) -> torch.Tensor:
    """Normalized Gaussian PSF (sigmas in HR pixels; ``ratio`` minor/major), +-3 sigma wide."""
    radius = max(1, math.ceil(3 * sigma_major))
    k = torch.exp(-0.5 * gaussian_grid(2 * radius + 1, sigma_major, sigma_major * ratio, theta))
    return (k / k.sum()).float()


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
    """Reduce ``x`` (sides multiples of ``scale``) by ``scale`` with one of :data:`REDUCTIONS`.

    ``phase`` (HR pixels, each within +-(scale-1)/2) moves the sampling points of the
    point-sampled modes away from the block centres, as a sensor grid that does not line
    up with the scene; the prefiltered modes ignore it.
    """
    h, w = x.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"image size {h}x{w} is not a multiple of the scale {scale}")
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
    x: torch.Tensor, generator: torch.Generator, sigma: float, poisson: bool = False, gray: bool = False
) -> torch.Tensor:
    """Gaussian noise of ``sigma`` ([0, 1] units). Poisson-like: scaled by sqrt(2 x), so
    ``sigma`` holds at mid-grey, less in shadows and more in highlights, as shot noise."""
    shape = (x.shape[0], 1, *x.shape[-2:]) if gray else x.shape
    noise = torch.randn(shape, generator=generator).to(x) * sigma
    if poisson:
        noise = noise * (2 * x.clamp(0, 1)).sqrt()
    return x + noise


def jpeg(x: torch.Tensor, quality: float) -> torch.Tensor:
    """JPEG round trip of each image at ``quality`` through GDAL's JPEG driver (libjpeg:
    standard tables, YCbCr with 4:2:0 chroma for three bands), in memory."""
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    out = []
    for image in quantize(x):
        values = (image * 255).round().to(torch.uint8).cpu().numpy()
        c, h, w = values.shape
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile() as mem:
                profile = {"driver": "JPEG", "width": w, "height": h, "count": c, "dtype": "uint8"}
                with mem.open(**profile, quality=round(quality)) as ds:
                    ds.write(values)
                with mem.open() as ds:
                    decoded = ds.read()
        out.append(torch.from_numpy(decoded.astype(np.float32) / 255))
    return torch.stack(out).to(x)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """To 8-bit levels in [0, 1], as the products users bring."""
    return (x.clamp(0, 1) * 255).round() / 255


# The "moderate realistic" degradation of the model card and the Quality Check, fixed: a
# slightly anisotropic Gaussian PSF (sigma 0.5 x scale along 30 degrees, 0.35 x scale
# across), area reduction (detector integration), Gaussian noise of 2/255 with a fixed
# seed, JPEG quality 85, 8-bit quantization.
REALISTIC_PSF = (0.5, 0.7, math.pi / 6)  # sigma (x scale), minor/major ratio, orientation
REALISTIC_NOISE = 2.0  # 8-bit levels
REALISTIC_JPEG = 85.0


def realistic(hr: torch.Tensor, scale: int, seed: int = 0) -> torch.Tensor:
    """The fixed moderate realistic degradation, [B,C,H,W] in [0, 1] -> [B,C,H/s,W/s]."""
    g = torch.Generator().manual_seed(seed)
    sigma, ratio, theta = REALISTIC_PSF
    x = blur(hr.float(), gaussian_psf(sigma * scale, ratio, theta))
    x = reduce_by(x, scale, "area")
    x = add_noise(x, g, REALISTIC_NOISE / 255)
    return jpeg(x, REALISTIC_JPEG).to(hr.dtype)


def degrade(hr: torch.Tensor, scale: int, kind: str, seed: int = 0) -> torch.Tensor:
    """``realistic`` or one of :data:`REDUCTIONS` (8-bit quantized) applied to ``hr``."""
    if kind == "realistic":
        return realistic(hr, scale, seed)
    return quantize(reduce_by(hr.float(), scale, kind)).to(hr.dtype)
