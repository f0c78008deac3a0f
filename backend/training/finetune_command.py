"""``slimdiffsr finetune``: adapt any student to the user's own HR rasters.

Self-supervised: the user's HR rasters are the targets, their LR inputs are synthesised
(Real-ESRGAN degradation by default, bicubic for clean data), and a held-out share of the
files (by name hash, or --val-data) measures whether the adaptation helps: validation at
step 0 gives the starting model's PSNR for comparison.
"""

from __future__ import annotations

import argparse

from backend.training.train_command import add_common_arguments, run_trainer, settings_from_args

HELP = "fine-tune a student (release .pkl or .safetensors) on your own HR rasters, with held-out validation"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, help="your HR rasters or folders")
    p.add_argument("--init", required=True, help="the student to adapt (.safetensors or release .pkl)")
    add_common_arguments(p, default_steps=2000, default_lr=2e-5)
    p.set_defaults(degradation="realesrgan", val_fraction=0.2, warmup=50, val_every=100)


def run(args: argparse.Namespace) -> int:
    from backend.training.finetune import FineTuner

    args.student = None
    settings = settings_from_args(args, "finetune", f"slimdiffsr_finetuned_x{args.scale}")
    return run_trainer(FineTuner, settings, args)
