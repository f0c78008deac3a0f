"""``slimdiffsr distill``: MMD feature distillation of a teacher into a (pruned) student."""

from __future__ import annotations

import argparse

from backend.training.train_command import add_common_arguments, run_trainer, settings_from_args

HELP = "distil a teacher into a student (multi-kernel MMD on z_denoised + image losses; resumable)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, help="HR rasters or folders")
    p.add_argument("--teacher", required=True, help="teacher directory written by 'teacher' (or a base)")
    p.add_argument("--init", required=True, help="student to start from (usually the output of 'prune')")
    p.add_argument("--mmd", type=float, default=1.0, dest="mmd_weight", help="MMD weight")
    p.add_argument("--mmd-samples", type=int, default=1024, help="feature vectors sampled per side")
    p.add_argument(
        "--teacher-image",
        type=float,
        default=0.0,
        dest="teacher_image_weight",
        help="weight of L1 to the teacher's image",
    )
    p.add_argument("--gan", type=float, default=0.0, dest="gan_weight", help="adversarial (hinge) weight")
    add_common_arguments(p, default_steps=20000, default_lr=1e-4)
    p.set_defaults(degradation="realesrgan")


def run(args: argparse.Namespace) -> int:
    from backend.training.distill import DistillTrainer

    settings = settings_from_args(args, "distillation", f"slimdiffsr_distilled_x{args.scale}")
    settings.extra = {
        "teacher": args.teacher,
        "mmd_weight": args.mmd_weight,
        "mmd_samples": args.mmd_samples,
        "teacher_image_weight": args.teacher_image_weight,
        "gan_weight": args.gan_weight,
    }
    return run_trainer(DistillTrainer, settings, args)
