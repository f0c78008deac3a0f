"""Low-resolution synthesis from HR crops: bicubic (benchmarks) and Real-ESRGAN (real-world).

All functions take and return ``[B, C, H, W]`` float tensors in [0, 1] and draw every
random number from an explicit ``torch.Generator``, so a batch's LR images are a pure
function of the seed (reproducible runs, exact resume).
"""

from __future__ import annotations

import torch

from backend.model.lr_consistency import enlarge, reduce


def bicubic_downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic reduction by ``scale`` (the benchmark LR of SR papers), in [0, 1]."""
    return reduce(hr, scale).clamp(0.0, 1.0)


def network_input(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """LR in [0,1] -> the student's input: *2-1 then bicubic x scale, as ``SuperResolver``."""
    return enlarge(lr * 2 - 1, scale)


class BicubicDegradation:
    """The benchmark degradation: antialiased bicubic reduction, no randomness."""

    def __init__(self, scale: int) -> None:
        self.scale = scale

    def __call__(self, hr: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return bicubic_downscale(hr, self.scale)

    def describe(self) -> dict[str, object]:
        return {"kind": "bicubic", "scale": self.scale, "antialias": True}


def make_degrader(name: str, scale: int):
    """``bicubic``, ``sensor`` (remote-sensing PSF, reductions, noise, JPEG) or
    ``realesrgan`` (the paper's second-order pipeline)."""
    if name == "bicubic":
        return BicubicDegradation(scale)
    if name == "sensor":
        from backend.training.sensor_degradation import SensorDegradation

        return SensorDegradation(scale)
    if name == "realesrgan":
        from backend.training.realesrgan import RealESRGANDegradation

        return RealESRGANDegradation(scale)
    raise ValueError(f"unknown degradation '{name}'; use bicubic, sensor or realesrgan")
