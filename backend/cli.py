"""Command line without QGIS: ``slimdiffsr COMMAND ...`` (or ``python -m backend.cli``).

Each subcommand lives beside the code it drives and exposes ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches, importing
a command's module when it is used so ``--help`` stays fast and light.

Exit codes: 0 success, 1 failure while running, 2 bad input or usage, 130 cancelled.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from backend.runtime.memory import prefer_huge_pages

COMMANDS: dict[str, str] = {
    "upscale": "backend.engine.command",
    "upscale-batch": "backend.engine.batch_command",
    "convert": "backend.convert_command",
    "train": "backend.training.train_command",
    "teacher": "backend.training.teacher_command",
    "prune": "backend.training.prune_command",
    "distill": "backend.training.distill_command",
    "finetune": "backend.training.finetune_command",
}


def build_parser(commands: dict[str, str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimdiffsr", description="SlimDiffSR super-resolution for rasters")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in (commands or COMMANDS).items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prefer_huge_pages()  # before any command imports torch
    # Build only the requested subcommand's parser when we can tell which it is.
    commands = COMMANDS
    if argv and argv[0] in COMMANDS:
        commands = {argv[0]: COMMANDS[argv[0]]}
    args = build_parser(commands).parse_args(argv)
    try:
        return int(args._run(args))
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
