"""``slimdiffsr teacher``: train the single-step teacher (LoRA + uncertainty estimator)."""

from __future__ import annotations

import argparse

from backend.training.cli_fields import add_fields, from_args
from backend.training.settings import TeacherTraining, TrainSettings
from backend.training.train_command import add_training_arguments, run_trainer

HELP = "train the uncertainty-guided single-step teacher (LoRA on a local SD-Turbo copy)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base",
        required=True,
        help="local SD-Turbo diffusers directory (unet/, vae/, scheduler/, "
        "prompt_embeds.safetensors or text_encoder/+tokenizer/); nothing is downloaded",
    )
    add_fields(p, TeacherTraining)
    p.add_argument(
        "--write-tiny-base",
        action="store_true",
        help="first write a random tiny SD-shaped base into --base (tests, smoke runs)",
    )
    add_training_arguments(
        p,
        defaults={"steps": 10000, "lr": 1e-4, "degradation": "realesrgan", "crop": 256, "batch_size": 2},
        exclude=("student", "init"),
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.training.distill import TeacherTrainer

    if args.write_tiny_base and not (Path(args.base) / "unet").is_dir():
        from backend.training.teacher import write_tiny_base

        write_tiny_base(args.base, seed=args.seed)
    settings = from_args(
        TrainSettings,
        args,
        method="teacher",
        init=args.base,
        teacher_training=from_args(TeacherTraining, args),
    )
    return run_trainer(TeacherTrainer, settings, args)
