"""``slimdiffsr prune``: teacher UNet -> student by the paper's structured pruning."""

from __future__ import annotations

import argparse
import sys

from backend.training.cli_fields import add_fields, from_args
from backend.training.settings import Pruning

HELP = "prune a teacher UNet into a student (depth pruning, QGAM/FSC/DSC), inheriting surviving weights"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_fields(p, Pruning)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.training.pruning import paper_parameter_counts

    job = from_args(Pruning, args)
    if job.paper_counts:
        unet_params, student_params = paper_parameter_counts()
        print(
            f"SD-Turbo UNet {unet_params:,} ({unet_params / 1e6:.1f}M) -> SlimDiffSR student "
            f"{student_params:,} ({student_params / 1e6:.2f}M) parameters"
        )
        return 0
    if not job.teacher or not job.out:
        print("error: --teacher and --out are required (or --paper-counts)", file=sys.stderr)
        return 2
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    from backend.training.pruning import load_taesd, prune_teacher, student_config_for
    from backend.weights import save_safetensors

    unet = UNet2DConditionModel.from_pretrained(Path(job.teacher) / "unet", local_files_only=True)
    config = student_config_for(dict(unet.config), job.depth, **(job.student or {}))
    taesd = load_taesd(job.taesd) if job.taesd else None
    student, report = prune_teacher(unet, job.depth, taesd=taesd, config=config)
    print(report.summary())
    save_safetensors(
        student,
        job.out,
        job.scale,
        name=Path(job.out).stem,
        training={
            "method": "structured pruning (not yet distilled)",
            "teacher": Path(job.teacher).name,
            "depth": job.depth,
            "teacher_unet_params": report.teacher_unet_params,
            "student_params": report.student_params,
            "inherited_tensors": report.inherited_tensors,
            "taesd": Path(job.taesd).name if job.taesd else None,
        },
    )
    print(f"wrote {job.out}")
    return 0
