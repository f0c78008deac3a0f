"""``slimdiffsr distill``: MMD feature distillation of a teacher into a (pruned) student."""

from __future__ import annotations

import argparse

from backend.training.cli_fields import add_fields, from_args
from backend.training.settings import Distillation, TrainSettings
from backend.training.train_command import add_training_arguments, run_trainer

HELP = "distil a teacher into a student (multi-kernel MMD on z_denoised + image losses; resumable)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_fields(p, Distillation)
    add_training_arguments(
        p,
        defaults={"lr": 1e-4, "degradation": "realesrgan"},
        required=("init",),  # the student to start from, usually the output of 'prune'
        exclude=("student",),
    )


def run(args: argparse.Namespace) -> int:
    from backend.training.distill import DistillTrainer

    distillation = from_args(Distillation, args)
    settings = from_args(TrainSettings, args, method="distillation", distillation=distillation)
    return run_trainer(DistillTrainer, settings, args)
