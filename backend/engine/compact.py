"""Compact members of the student family, for benchmarks and tests on small CPUs.

Same modules as the paper's student (QGAM, FSC/DSC, TAESD slices), far narrower, so the
engine's behaviour (tiling, blending, I/O, memory) can be measured in seconds. Their
weights are random: they say nothing about image quality.
"""

from __future__ import annotations

from pathlib import Path

import torch

from backend.model import SlimDiffSRStudent, StudentConfig
from backend.model.config import COMPACT_STUDENT, PAPER_STUDENT
from backend.weights import save_safetensors

TINY = StudentConfig(
    unet_channels=(32, 64, 64), layers_per_block=1, norm_groups=8, num_queries=8, squeeze_dim=16,
    vae_channels=16, encoder_blocks=(1, 1, 1, 1), decoder_blocks=(1, 1, 1, 1), input_residual=True,
)
"""The tests' tiny student with the input residual: with random weights its output is the
bicubic input plus a small perturbation, like a trained model's, so the colour match does
not amplify noise (a random network without the residual outputs a nearly flat image)."""

NANO = StudentConfig(
    unet_channels=(8, 8, 8), layers_per_block=1, norm_groups=4, num_queries=4, squeeze_dim=8,
    vae_channels=8, encoder_blocks=(0, 0, 0, 0), decoder_blocks=(0, 0, 0, 0), input_residual=True,
)
"""The smallest useful member: no TAESD residual blocks; for I/O-bound measurements."""

CONFIGS = {"tiny": TINY, "nano": NANO, "compact": COMPACT_STUDENT, "paper": PAPER_STUDENT}
"""``compact`` is the bundled default model's architecture, ``paper`` the paper's student."""


def write_random_weights(path: str | Path, config: StudentConfig, scale: int = 4, seed: int = 0) -> Path:
    """A self-describing .safetensors file with seeded random weights."""
    torch.manual_seed(seed)
    return save_safetensors(SlimDiffSRStudent(config), path, scale, name=f"random {Path(path).stem}")
