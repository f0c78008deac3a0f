"""The bundled default model: its starting point and its model-card evaluation.

``init`` writes the compact student with its last decoder convolution zeroed: with the
input residual, the untrained network then outputs exactly the bicubic image, so
training starts from bicubic quality and can only add detail.
"""

from __future__ import annotations

import argparse
import sys

import torch

from backend.model import COMPACT_STUDENT, SlimDiffSRStudent
from backend.weights import save_safetensors


def initial_student(seed: int = 0) -> SlimDiffSRStudent:
    torch.manual_seed(seed)
    model = SlimDiffSRStudent(COMPACT_STUDENT)
    with torch.no_grad():
        last = model.vae.decoder.layers[-1]
        last.weight.zero_()
        last.bias.zero_()
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.default_model")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="write the untrained compact student (output = bicubic)")
    p.add_argument("--scale", type=int, default=4, choices=(2, 4, 8))
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.command == "init":
        save_safetensors(initial_student(), args.out, args.scale, name="compact student, untrained")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
