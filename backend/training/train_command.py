"""``slimdiffsr train``: supervised training of a student on folders of HR rasters."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HELP = "train a student on your HR rasters (synthetic LR, image losses; resumable, runs in chunks)"


def parse_student(value: str | None) -> dict[str, Any] | None:
    """A preset name, a JSON file, or a JSON string -> StudentConfig fields (validated)."""
    from backend.model import PRESETS, StudentConfig

    if value is None:
        return None
    if value in PRESETS:
        data = PRESETS[value].to_dict()
    elif not value.lstrip().startswith("{") and Path(value).is_file():
        data = json.loads(Path(value).read_text())
    else:
        try:
            data = json.loads(value)
        except json.JSONDecodeError:
            raise argparse.ArgumentTypeError(
                f"--student {value!r} is neither a preset ({', '.join(PRESETS)}), a file nor JSON"
            ) from None
    return StudentConfig.from_dict(data).to_dict()


def add_common_arguments(p: argparse.ArgumentParser, *, default_steps: int, default_lr: float) -> None:
    """Options shared by train, distill and finetune."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--val-data",
        nargs="*",
        default=[],
        help="held-out rasters/folders (default: a hash-chosen fraction of --data)",
    )
    g.add_argument("--val-fraction", type=float, default=0.1, help="share of files held out (default 0.1)")
    g.add_argument("--scale", type=int, default=4, choices=(2, 4, 8))
    g.add_argument("--crop", type=int, default=128, help="HR crop size in pixels (default 128; paper 256)")
    g.add_argument("--degradation", choices=("bicubic", "sensor", "realesrgan"), default="bicubic")
    g.add_argument(
        "--lr-consistency",
        action="store_true",
        help="back-project the output to the LR input inside the loss (and record it in the weights)",
    )
    g.add_argument("--max-invalid", type=float, default=0.01, help="largest nodata share of a crop")
    g.add_argument(
        "--sampling",
        choices=("area", "sqrt-area"),
        default="area",
        help="draw files by area (each pixel equally likely) or by its square root (small scenes weigh more)",
    )
    g.add_argument("--workers", type=int, default=0, help="data loader processes")
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=default_steps)
    o.add_argument("--batch-size", type=int, default=4)
    o.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    o.add_argument("--lr", type=float, default=default_lr)
    o.add_argument("--weight-decay", type=float, default=1e-4)
    o.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    o.add_argument("--warmup", type=int, default=100)
    o.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    o.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="autocast dtype (bf16 on CPU or GPU, fp16 on CUDA with loss scaling)",
    )
    o.add_argument("--l1", type=float, default=1.0, dest="l1_weight")
    o.add_argument(
        "--mse",
        type=float,
        default=0.0,
        dest="mse_weight",
        help="squared error, what PSNR measures (e.g. --l1 0 --mse 1 to fine-tune an L1 model for PSNR)",
    )
    o.add_argument("--ssim", type=float, default=0.0, dest="ssim_weight")
    o.add_argument("--fft", type=float, default=0.0, dest="fft_weight")
    o.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("run")
    r.add_argument("--out", required=True, help="run folder (checkpoint, logs, exported weights)")
    r.add_argument("--name", default=None, help="name of the exported .safetensors (default from the run)")
    r.add_argument("--device", default="auto")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    r.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop (checkpoint + export) after this long; run again to continue",
    )
    r.add_argument("--checkpoint-every", type=int, default=200)
    r.add_argument("--val-every", type=int, default=200)
    r.add_argument("--val-crops-per-file", type=int, default=2)
    r.add_argument("--log-every", type=int, default=10)
    r.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard")
    r.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, help="HR rasters or folders (GeoTIFF/PNG/JPEG)")
    p.add_argument(
        "--student",
        default=None,
        help="StudentConfig as a preset (paper, compact), a JSON "
        "file or a JSON string (default: the paper's student)",
    )
    p.add_argument("--init", default=None, help="start from these weights (.safetensors or release .pkl)")
    add_common_arguments(p, default_steps=20000, default_lr=2e-4)


def settings_from_args(args: argparse.Namespace, method: str, default_name: str):
    from backend.training.trainer import TrainSettings

    return TrainSettings(
        data=[str(d) for d in args.data],
        out=args.out,
        val_data=list(args.val_data),
        val_fraction=args.val_fraction,
        scale=args.scale,
        crop=args.crop,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        steps=args.steps,
        lr=args.lr,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        warmup=args.warmup,
        grad_clip=args.grad_clip,
        precision=args.precision,
        l1_weight=args.l1_weight,
        mse_weight=args.mse_weight,
        ssim_weight=args.ssim_weight,
        fft_weight=args.fft_weight,
        degradation=args.degradation,
        lr_consistency=args.lr_consistency,
        checkpoint_every=args.checkpoint_every,
        val_every=args.val_every,
        val_crops_per_file=args.val_crops_per_file,
        log_every=args.log_every,
        max_minutes=args.max_minutes,
        seed=args.seed,
        device=args.device,
        workers=args.workers,
        init=getattr(args, "init", None),
        student=parse_student(getattr(args, "student", None)),
        name=args.name or default_name,
        method=method,
        tensorboard=args.tensorboard,
        max_invalid=args.max_invalid,
        sampling=args.sampling,
    )


def run_trainer(trainer_cls, settings, args: argparse.Namespace) -> int:
    import torch

    from backend.training.data import DataError
    from backend.training.trainer import TrainingError
    from backend.weights import WeightsError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        trainer = trainer_cls(settings)
        trainer.run(restart=args.restart)
    except (TrainingError, DataError, WeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(
            f"error: {exc.name or exc} is missing; install the training extras: "
            "pip install -r requirements-train.txt (or make train-install)",
            file=sys.stderr,
        )
        return 2
    return 130 if trainer.stopped_by.startswith("signal") else 0


def run(args: argparse.Namespace) -> int:
    from backend.training.trainer import StudentTrainer

    settings = settings_from_args(args, "supervised", f"slimdiffsr_x{args.scale}")
    return run_trainer(StudentTrainer, settings, args)
