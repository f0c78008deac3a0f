"""Low-resolution synthesis from HR crops: bicubic (benchmarks), sensor-like and Real-ESRGAN.

All functions take and return ``[B, C, H, W]`` float tensors in [0, 1] and draw every
random number from an explicit ``torch.Generator``, so a batch's LR images are a pure
function of the seed (reproducible runs, exact resume).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Generic, TypeVar

import torch

from backend.model.lr_consistency import enlarge, reduce
from backend.training.settings import DEGRADATIONS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

S = TypeVar("S", bound="DataclassInstance")


def bicubic_downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic reduction by ``scale`` (the benchmark LR of SR papers), in [0, 1]."""
    return reduce(hr, scale).clamp(0.0, 1.0)


def network_input(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """LR in [0,1] -> the student's input: *2-1 then bicubic x scale, as ``SuperResolver``."""
    return enlarge(lr * 2 - 1, scale)


class Degradation:
    """Callable ``(hr [B,C,H,W] in [0,1], generator) -> lr [B,C,H/s,W/s]`` that says what
    it does (:meth:`describe`, recorded in the trained weights' metadata)."""

    kind = ""

    def __init__(self, scale: int) -> None:
        self.scale = scale

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "scale": self.scale}

    def __call__(self, hr: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        h, w = hr.shape[-2:]
        if h % self.scale or w % self.scale:
            raise ValueError(f"HR size {h}x{w} is not a multiple of the scale {self.scale}")
        return self.degrade(hr, generator or torch.Generator().manual_seed(0))

    def degrade(self, hr: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


class RandomDegradation(Degradation, Generic[S]):
    """A degradation drawn from the ranges of a settings dataclass ``S``, every random number
    from the caller's generator."""

    def __init__(self, scale: int, settings: S) -> None:
        super().__init__(scale)
        self.settings = settings

    def describe(self) -> dict[str, object]:
        return {**super().describe(), **asdict(self.settings)}


class BicubicDegradation(Degradation):
    """The benchmark degradation: antialiased bicubic reduction, no randomness."""

    kind = "bicubic"

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "antialias": True}

    def degrade(self, hr: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return bicubic_downscale(hr, self.scale)


def make_degrader(name: str, scale: int, clean_share: float | None = None) -> Degradation:
    """``bicubic``, ``sensor`` (remote-sensing PSF, reductions, noise, JPEG), one of its
    regimes alone (``sensor-soft``, ``sensor-aliased``) or ``realesrgan`` (the paper's
    second-order pipeline). ``clean_share``: a sensor synthesis's share of antialiased
    bicubic reductions instead of its own (None: its own)."""
    if name == "bicubic":
        return BicubicDegradation(scale)
    if name.startswith("sensor"):
        from backend.training.sensor_degradation import REGIMES, SensorDegradation, SensorSettings

        settings = REGIMES.get(name.removeprefix("sensor-"), SensorSettings())
        if clean_share is not None:
            settings = replace(settings, clean_prob=clean_share)
        return SensorDegradation(scale, settings)
    if name == "realesrgan":
        from backend.training.realesrgan import RealESRGANDegradation

        return RealESRGANDegradation(scale)
    raise ValueError(f"unknown degradation '{name}'; use {', '.join(DEGRADATIONS)}")
