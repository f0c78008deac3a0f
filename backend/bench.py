"""Model benchmark: Mpx/s per configuration and precision against a naive baseline.

The baseline is the release's way of running the student: fp32, NCHW, the whole image
at once, pad to 256, per-image colour match. Every configuration is timed against it in
the same run (absolute times on a shared 2-core machine are noisy; ratios are not), and
reduced precision is checked against fp32 on the same input.

    python -m backend.bench [--size 1024] [--repeat 2] [--configs paper,compact]
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from backend.engine.margin import synthetic_image
from backend.inference import SuperResolver, cpu_has_fast_bf16
from backend.model import PRESETS, SlimDiffSRStudent, StudentConfig


def flops_per_output_pixel(config: StudentConfig, size: int = 256) -> float:
    """Counted FLOPs (2 per multiply-add) of one forward, per output pixel."""
    model = SlimDiffSRStudent(config).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, config.image_channels, size, size))
    return counter.get_total_flops() / (size * size)


def release_style_copy(model: SlimDiffSRStudent) -> SlimDiffSRStudent:
    """The same weights with the release's out-of-place ReLUs (diffusers' TAESD blocks)."""
    naive = copy.deepcopy(model)
    for module in naive.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    return naive


def naive_release_forward(model: SlimDiffSRStudent, lr: np.ndarray, scale: int) -> np.ndarray:
    """The release's test script: fp32, NCHW, whole image, pad to 256, own statistics."""
    x = torch.from_numpy(lr.transpose(2, 0, 1).copy())[None] * 2 - 1
    x = F.interpolate(x, scale_factor=scale, mode="bicubic")
    h, w = x.shape[-2:]
    x = F.pad(x, (0, (-w) % 256, 0, (-h) % 256), mode="reflect")
    with torch.no_grad():
        sr = model(x)[1][:, :, :h, :w]
    sr = (sr - sr.mean((2, 3), keepdim=True)) / sr.std(dim=(2, 3), keepdim=True)
    sr = sr * x.std(dim=(2, 3), keepdim=True) + x.mean((2, 3), keepdim=True)
    return (sr[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()


def _time(fn: Callable[[], np.ndarray], repeat: int) -> tuple[float, np.ndarray]:
    out = fn()  # warm-up (allocator, oneDNN primitive cache)
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - start) / repeat, out


def test_image(size: int, seed: int = 0) -> np.ndarray:
    """A smooth image-like LR input HxWx3 in [0, 1] (random weights make content irrelevant)."""
    return np.ascontiguousarray(synthetic_image(size, seed).transpose(1, 2, 0))


def run(size: int, repeat: int, configs: list[str], scale: int = 4) -> list[dict[str, object]]:
    lr = test_image(size // scale)
    mpx = size * size / 1e6
    rows: list[dict[str, object]] = []
    for name in configs:
        config = PRESETS[name]
        torch.manual_seed(0)
        model = SlimDiffSRStudent(config).eval()
        params = sum(p.numel() for p in model.parameters())
        flops = flops_per_output_pixel(config)
        naive = release_style_copy(model)
        t_naive, _ = _time(lambda m=naive: naive_release_forward(m, lr, scale), repeat)
        rows.append(dict(config=name, precision="fp32 naive", params=params, flops=flops,
                         mpx_s=mpx / t_naive, speedup=1.0, rel_l2=None, dn99=None))
        reference = None
        precisions = ["fp32"] + (["bf16"] if cpu_has_fast_bf16() else [])
        for precision in precisions:
            resolver = SuperResolver(copy.deepcopy(model), scale, "cpu", precision)
            t, out = _time(lambda r=resolver: r.super_resolve(lr, pad_multiple=r.multiple), repeat)
            rel = dn = None
            if reference is None:
                reference = out
            else:
                rel = float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
                dn = float(np.quantile(np.abs(np.round(out * 255) - np.round(reference * 255)), 0.99))
            rows.append(dict(config=name, precision=f"{precision} channels-last", params=params,
                             flops=flops, mpx_s=mpx / t, speedup=t_naive / t, rel_l2=rel, dn99=dn))
    return rows


def format_table(rows: list[dict[str, object]], size: int) -> str:
    lines = [
        f"Model throughput, {size}x{size} output, x4, CPU threads={torch.get_num_threads()}",
        "| config | precision | params (M) | MFLOP/px | Mpx/s | vs naive | rel L2 vs fp32 | 99% |DN| |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rel = "-" if r["rel_l2"] is None else f"{r['rel_l2']:.4f}"
        dn = "-" if r["dn99"] is None else f"{r['dn99']:.0f}"
        lines.append(
            f"| {r['config']} | {r['precision']} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e6:.3f} | "
            f"{r['mpx_s']:.3f} | {r['speedup']:.2f}x | {rel} | {dn} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--size", type=int, default=1024, help="output size in pixels (square)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--configs", default="paper,compact", help=f"comma list of {sorted(PRESETS)}")
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in PRESETS]
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {sorted(PRESETS)}")
    print(format_table(run(args.size, args.repeat, configs), args.size), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
