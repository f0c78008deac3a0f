"""``slimdiffsr convert``: a release checkpoint (.pkl) to a self-describing .safetensors."""

from __future__ import annotations

import argparse
import sys

from backend.weights import WeightsError, convert_release

HELP = "convert an authors' release checkpoint (.pkl/.pth) to .safetensors with metadata"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="release checkpoint, e.g. net_params_4x.pkl")
    parser.add_argument("target", help="output .safetensors path")
    parser.add_argument("--scale", type=int, choices=(2, 4, 8), help="scale if the file name does not say it")


def run(args: argparse.Namespace) -> int:
    if not args.target.endswith(".safetensors"):
        print("error: the target must end with .safetensors", file=sys.stderr)
        return 2
    try:
        out = convert_release(args.source, args.target, args.scale)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
