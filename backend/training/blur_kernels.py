"""The blur kernel families of Real-ESRGAN's degradation model (Wang et al. 2021), in torch.

Gaussian (isotropic/anisotropic), generalized Gaussian (``exp(-q^beta / 2)``, sharper or
flatter top), plateau (``1 / (1 + q^beta)``, heavy tails) and the 2-D ``sinc`` (ideal
low-pass: ringing and overshoot). ``q`` is the Mahalanobis form ``x^T S^-1 x`` of a
rotated covariance ``S``. Every random number comes from the caller's generator.
"""

from __future__ import annotations

import math

import torch

from backend.degradation import gaussian_grid

KERNEL_FAMILIES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64))


def choice(generator: torch.Generator, weights: tuple[float, ...] | list[float]) -> int:
    w = torch.tensor(weights, dtype=torch.float64)
    return int(torch.multinomial(w / w.sum(), 1, generator=generator))


def family_kernel(
    family: str, size: int, sigma_x: float, sigma_y: float, theta: float, beta: float = 1.0
) -> torch.Tensor:
    """One normalized kernel of a family (``beta`` ignored by the plain Gaussians)."""
    q = gaussian_grid(size, sigma_x, sigma_y, theta)
    if family in ("iso", "aniso"):
        k = torch.exp(-0.5 * q)
    elif family.startswith("generalized"):
        k = torch.exp(-0.5 * q.pow(beta))
    elif family.startswith("plateau"):
        k = 1.0 / (1.0 + q.pow(beta))
    else:
        raise ValueError(f"unknown kernel family '{family}'")
    return (k / k.sum()).float()


def sinc_kernel(size: int, cutoff: float) -> torch.Tensor:
    """Circular low-pass: ``wc * J1(wc r) / (2 pi r)``, normalized (Real-ESRGAN's sinc filter)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    r = torch.sqrt(xx**2 + yy**2)
    k = torch.empty_like(r)
    nz = r > 0
    k[nz] = cutoff * torch.special.bessel_j1(cutoff * r[nz]) / (2 * math.pi * r[nz])
    k[~nz] = cutoff**2 / (4 * math.pi)
    return (k / k.sum()).float()


def random_family_kernel(
    generator: torch.Generator,
    size: int,
    families: tuple[str, ...],
    probs: tuple[float, ...],
    sigma: tuple[float, float],
    beta_g: tuple[float, float],
    beta_p: tuple[float, float],
) -> torch.Tensor:
    """Draw a family, then its parameters, as Real-ESRGAN's ``random_mixed_kernels``."""
    family = families[choice(generator, probs)]
    sx = uniform(generator, *sigma)
    if family.endswith("iso") and not family.endswith("aniso"):
        sy, theta = sx, 0.0
    else:
        sy, theta = uniform(generator, *sigma), uniform(generator, -math.pi, math.pi)
    beta = 1.0
    if family.startswith("generalized"):
        # Half of the draws below 1 (heavier tails), half above (flatter top), as the reference.
        beta = (
            uniform(generator, beta_g[0], 1.0)
            if uniform(generator, 0, 1) < 0.5
            else uniform(generator, 1.0, beta_g[1])
        )
    elif family.startswith("plateau"):
        beta = uniform(generator, *beta_p)
    return family_kernel(family, size, sx, sy, theta, beta)


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad an odd kernel to ``size`` x ``size`` so kernels of a batch stack."""
    p = (size - kernel.shape[-1]) // 2
    return torch.nn.functional.pad(kernel, (p, p, p, p))
