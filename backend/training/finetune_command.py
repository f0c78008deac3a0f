"""``slimdiffsr finetune``: adapt any student to the user's own HR rasters.

Self-supervised: the user's HR rasters are the targets, their LR inputs are synthesised
(Real-ESRGAN degradation by default, bicubic for clean data), and a held-out share of the
files (by name hash, or --val-data) measures whether the adaptation helps: validation at
step 0 gives the starting model's PSNR for comparison.
"""

from __future__ import annotations

import argparse

from backend.training.cli_fields import from_args
from backend.training.settings import TrainSettings
from backend.training.train_command import add_training_arguments, run_trainer

HELP = "fine-tune a student (release .pkl or .safetensors) on your own HR rasters, with held-out validation"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_training_arguments(
        p,
        defaults={
            "steps": 2000,
            "lr": 2e-5,
            "degradation": "realesrgan",
            "val_fraction": 0.2,
            "warmup": 50,
            "val_every": 100,
        },
        required=("init",),  # the student to adapt
        exclude=("student",),
    )


def run(args: argparse.Namespace) -> int:
    from backend.training.finetune import FineTuner

    return run_trainer(FineTuner, from_args(TrainSettings, args, method="finetune"), args)
