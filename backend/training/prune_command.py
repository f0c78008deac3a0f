"""``slimdiffsr prune``: teacher UNet -> student by the paper's structured pruning."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "prune a teacher UNet into a student (depth pruning, QGAM/FSC/DSC), inheriting surviving weights"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", help="teacher or base diffusers directory (its unet/ is pruned)")
    p.add_argument("--out", help="student .safetensors to write")
    p.add_argument("--depth", type=int, default=2, help="levels kept by depth pruning (paper: 2)")
    p.add_argument("--taesd", default=None, help="local AutoencoderTiny directory for the tiny VAE slices")
    p.add_argument(
        "--student",
        default=None,
        help="StudentConfig fields overriding the derived ones (JSON), e.g. a thinner tiny VAE for tests",
    )
    p.add_argument("--scale", type=int, default=4, choices=(2, 4, 8))
    p.add_argument(
        "--paper-counts",
        action="store_true",
        help="only print the paper configuration's parameter counts (meta device, no memory)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from backend.training.pruning import paper_parameter_counts

    if args.paper_counts:
        unet, student = paper_parameter_counts()
        print(
            f"SD-Turbo UNet {unet:,} ({unet / 1e6:.1f}M) -> SlimDiffSR student {student:,} "
            f"({student / 1e6:.2f}M) parameters"
        )
        return 0
    if not args.teacher or not args.out:
        print("error: --teacher and --out are required (or --paper-counts)", file=sys.stderr)
        return 2
    from diffusers import UNet2DConditionModel

    from backend.training.pruning import load_taesd, prune_teacher, student_config_for
    from backend.weights import save_safetensors

    unet = UNet2DConditionModel.from_pretrained(Path(args.teacher) / "unet", local_files_only=True)
    overrides = json.loads(args.student) if args.student else {}
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    config = student_config_for(dict(unet.config), args.depth, **overrides)
    taesd = load_taesd(args.taesd) if args.taesd else None
    student, report = prune_teacher(unet, args.depth, taesd=taesd, config=config)
    print(report.summary())
    save_safetensors(
        student,
        args.out,
        args.scale,
        name=Path(args.out).stem,
        training={
            "method": "structured pruning (not yet distilled)",
            "teacher": Path(args.teacher).name,
            "depth": args.depth,
            "teacher_unet_params": report.teacher_unet_params,
            "student_params": report.student_params,
            "inherited_tensors": report.inherited_tensors,
            "taesd": Path(args.taesd).name if args.taesd else None,
        },
    )
    print(f"wrote {args.out}")
    return 0
