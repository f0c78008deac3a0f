"""``slimdiffsr train``: supervised training of a student on folders of HR rasters.

The options are generated from :class:`~backend.training.settings.TrainSettings` (one field
per option); ``teacher``, ``distill`` and ``finetune`` generate theirs the same way, with
their own defaults.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from backend.training.cli_fields import add_fields, from_args
from backend.training.settings import TrainSettings

if TYPE_CHECKING:
    from backend.training.trainer import BaseTrainer

HELP = "train a student on your HR rasters (synthetic LR, image losses; resumable, runs in chunks)"


def add_training_arguments(
    p: argparse.ArgumentParser,
    *,
    defaults: Mapping[str, Any] | None = None,
    required: Collection[str] = (),
    exclude: Collection[str] = (),
) -> None:
    """The :class:`TrainSettings` options with a command's own defaults (train, teacher,
    distill, finetune), and how to run them: CPU threads, restart."""
    groups = add_fields(p, TrainSettings, defaults=defaults, required=required, exclude=exclude)
    groups["run"].add_argument("--threads", type=int, default=None, help="torch CPU threads")
    groups["run"].add_argument(
        "--restart", action="store_true", help="ignore an existing checkpoint in --out"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_training_arguments(p)


def run_trainer(
    trainer_cls: type[BaseTrainer[Any]], settings: TrainSettings, args: argparse.Namespace
) -> int:
    """Train with ``args.threads``, from scratch with ``args.restart``; a one-line error and
    exit code 2 for what the user can fix, 130 when a signal stopped the run."""
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

    return run_trainer(StudentTrainer, from_args(TrainSettings, args, method="supervised"), args)
