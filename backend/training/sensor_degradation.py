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

The operators themselves live in :mod:`backend.degradation` (shared with the evaluation
and the Quality Check); this module only draws their parameters, every random number from
the caller's ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from backend.degradation import REDUCTIONS, add_noise, blur, gaussian_psf, jpeg, quantize, reduce_by
from backend.model.lr_consistency import reduce
from backend.training.blur_kernels import choice, uniform
from backend.training.degradations import RandomDegradation


@dataclass(frozen=True)
class SensorSettings:
    """Probabilities and ranges of :class:`SensorDegradation` (see the module docstring)."""

    clean_prob: float = 0.25
    psf_prob: float = 0.75
    aniso_prob: float = 0.4
    psf_sigma: tuple[float, float] = (0.2, 0.8)  # x scale, in HR pixels
    aniso_ratio: tuple[float, float] = (0.5, 1.0)  # minor / major sigma
    reduction_probs: tuple[float, ...] = (0.25, 0.25, 0.15, 0.2, 0.15)  # backend.degradation.REDUCTIONS
    shift_prob: float = 0.5
    noise_prob: float = 0.6
    poisson_prob: float = 0.5  # of the noisy images, signal-dependent noise
    noise_max: float = 4.0  # sigma in 8-bit levels (Poisson-like: at mid-grey)
    gray_noise_prob: float = 0.3
    jpeg_prob: float = 0.4
    jpeg_quality: tuple[float, float] = (70.0, 95.0)


def _only(*modes: str) -> tuple[float, ...]:
    """Reduction probabilities: the given :data:`REDUCTIONS` modes, equally likely."""
    return tuple(1.0 if m in modes else 0.0 for m in REDUCTIONS)


REGIMES = {
    # A clean product: resampled with an antialiasing filter (or integrated over the
    # detector) from a sharp image, at most a trace of blur, noise and compression.
    "clean": SensorSettings(
        clean_prob=0.0,
        psf_prob=0.3,
        psf_sigma=(0.02, 0.15),
        reduction_probs=(0.25, 0.5, 0.25, 0.0, 0.0),
        noise_prob=0.3,
        noise_max=1.5,
        jpeg_prob=0.2,
        jpeg_quality=(90.0, 98.0),
    ),
    # A soft product: the optics' and detector's blur integrated over the detector (area),
    # sensor noise and JPEG; what most satellite and aerial products look like.
    "soft": SensorSettings(
        clean_prob=0.0,
        psf_prob=1.0,
        psf_sigma=(0.3, 0.6),
        reduction_probs=_only("area"),
        noise_prob=0.9,
        noise_max=3.0,
        jpeg_prob=0.7,
        jpeg_quality=(75.0, 95.0),
    ),
    # An undersampled product: little blur, sampled without an antialiasing filter at an
    # arbitrary phase (cv2.resize, GDAL's cubic/bilinear overviews, undersampled sensors),
    # so fine patterns alias; light noise and JPEG.
    "aliased": SensorSettings(
        clean_prob=0.0,
        psf_prob=0.5,
        psf_sigma=(0.05, 0.25),
        reduction_probs=_only("bicubic-point", "bilinear-point"),
        shift_prob=0.7,
        noise_prob=0.5,
        noise_max=2.0,
        jpeg_prob=0.3,
        jpeg_quality=(80.0, 95.0),
    ),
}
"""The regimes a degradation-aware model has one expert for, as ``SensorSettings``;
``sensor-<regime>`` in training (the clean expert is trained on the benchmark's
antialiased bicubic reduction, which this clean regime contains)."""


class SensorDegradation(RandomDegradation[SensorSettings]):
    """Remote-sensing LR synthesis, drawn per image (see the module docstring)."""

    kind = "sensor"

    def __init__(self, scale: int, settings: SensorSettings | None = None) -> None:
        super().__init__(scale, settings or SensorSettings())

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

    def degrade(self, hr: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        out = torch.cat([self.one(hr[i : i + 1].float(), g) for i in range(hr.shape[0])])
        return out.to(hr.dtype)
