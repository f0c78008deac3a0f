"""Compact members of the student family, for benchmarks and tests on small CPUs.

Same modules as the paper's student (QGAM, FSC/DSC, TAESD slices), far narrower, so the
engine's behaviour (tiling, blending, I/O, memory) can be measured in seconds. Their
weights are random: they say nothing about image quality.
"""

from __future__ import annotations

from pathlib import Path

import torch

from backend.model import SlimDiffSRStudent, StudentConfig
from backend.model.config import NANO_STUDENT, PRESETS, TINY_STUDENT
from backend.weights import save_safetensors

TINY = TINY_STUDENT
NANO = NANO_STUDENT
CONFIGS = PRESETS
"""``compact`` is the bundled default model's architecture, ``paper`` the paper's student."""


def write_random_weights(path: str | Path, config: StudentConfig, scale: int = 4, seed: int = 0) -> Path:
    """A self-describing .safetensors file with seeded random weights."""
    torch.manual_seed(seed)
    return save_safetensors(SlimDiffSRStudent(config), path, scale, name=f"random {Path(path).stem}")
