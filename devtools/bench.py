"""Model benchmark: every inference path's speed and error against torch fp32, in one run.

For each network (the paper's student, random weights; the bundled default x4 model) and
each path (the release's way, torch fp32 channels-last, torch bf16 where the CPU has it
natively, ONNX Runtime and OpenVINO in fp32 and int8, and what ``precision=auto`` picks):

* output Mpx/s of ``super_resolve`` on a ``--size`` square output and the ratio to the
  release's way, timed in the same run (absolute times on a shared machine are noisy;
  ratios are not);
* error against torch fp32 on real imagery: crops of the shared folder's ``data/eval``
  (``--shared``, default $SLIMDIFFSR_SHARED) reduced x4 (antialiased bicubic), relative L2
  of the outputs and PSNR-Y against the originals; without that folder, speed alone.

int8 paths are calibrated on crops of ``data/train`` (never on eval); the
``auto (engine)`` row calibrates on each eval image itself, as the engine does on the
raster it processes. The header names the CPU, its ISA flags and the library versions.

    python -m devtools.bench [--size 1024] [--repeat 2] [--configs paper,default] [--shared DIR]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from backend.inference import InferenceError, SuperResolver
from backend.model import PRESETS, SlimDiffSRStudent, StudentConfig
from backend.model.global_context import GlobalStatistics
from backend.runtime.cpu import cpu_info
from backend.runtime.engines import available_runtimes
from devtools.data import shared_dir, synthetic_image

EVAL_SIDE = 256
"""Side (output pixels) of the central eval crop per raster: six crops keep the paper
student's slowest path to seconds."""
CALIBRATION_CROPS = 8
CALIBRATION_SIDE = 64


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


def _best_times(runs: list[Callable[[], object]], repeat: int) -> list[float]:
    """Each run's best time over ``repeat`` rounds after a warm-up (allocator, oneDNN primitive
    cache, runtime shape compilation), every round timing each run once in turn: on a shared
    machine whose speed drifts by 20 % within minutes, paths timed one after another would be
    compared at different speeds, and the best of a run's times is the one least slowed by
    other work."""
    for fn in runs:
        fn()
    best = [float("inf")] * len(runs)
    for _ in range(repeat):
        for i, fn in enumerate(runs):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def timing_image(size: int, seed: int = 0) -> np.ndarray:
    """A smooth image-like LR input HxWx3 in [0, 1] (speed does not depend on content)."""
    return np.ascontiguousarray(synthetic_image(size, seed).transpose(1, 2, 0))


# -- real imagery ------------------------------------------------------------------------------
def eval_pairs(folder: Path, scale: int, side: int = EVAL_SIDE) -> list[tuple[str, np.ndarray, torch.Tensor]]:
    """(name, LR HxWx3 in [0, 1], HR [1, 3, H, W]) per eval raster: its central ``side`` crop
    and the crop reduced by antialiased bicubic, the model card's benchmark synthesis."""
    from backend.default_model import load_eval_images
    from backend.degradation import degrade

    pairs = []
    for image in load_eval_images(folder, scale):
        h, w = image.hr.shape[-2:]
        s = min(side, h, w) // 16 * 16
        y, x = (h - s) // 2, (w - s) // 2
        hr = image.hr[..., y : y + s, x : x + s].contiguous()
        lr = degrade(hr, scale, "bicubic", seed=0).clamp(0, 1)
        pairs.append((image.name, np.ascontiguousarray(lr[0].permute(1, 2, 0).numpy()), hr))
    return pairs


def training_crops(
    folder: Path, count: int = CALIBRATION_CROPS, side: int = CALIBRATION_SIDE, seed: int = 0
) -> list[np.ndarray]:
    """Random ``side`` crops (HxWx3 in [0, 1], the training data's stretch) of distinct
    training rasters: the int8 calibration set."""
    import rasterio

    from backend.training.data import describe_raster, find_rasters

    rng = np.random.default_rng(seed)
    files = [f for f in find_rasters([folder])]
    crops: list[np.ndarray] = []
    for i in rng.permutation(len(files)):
        source = describe_raster(files[i])
        if min(source.width, source.height) < side:
            continue
        y, x = rng.integers(0, source.height - side + 1), rng.integers(0, source.width - side + 1)
        with rasterio.open(files[i]) as ds:
            values = ds.read(list(source.bands), window=rasterio.windows.Window(x, y, side, side))
        crops.append(np.ascontiguousarray(source.to_unit(values).transpose(1, 2, 0), dtype=np.float32))
        if len(crops) == count:
            break
    return crops


def psnr_y(sr: np.ndarray, hr: torch.Tensor, scale: int) -> float:
    from backend.metrics import psnr, rgb_to_y

    out = torch.from_numpy(np.ascontiguousarray(sr.transpose(2, 0, 1)))[None]
    return float(psnr(rgb_to_y(out), rgb_to_y(hr), border=scale))


# -- the paths ---------------------------------------------------------------------------------
@dataclass
class BenchPath:
    """One way of running the network: a name and a function LR image -> SR image."""

    name: str
    run: Callable[[np.ndarray], np.ndarray]
    description: str = ""
    per_image: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]] | None = None
    images: int = 1
    """Outputs of the image's size one run computes (tiles side by side)."""


def paths_for(
    model: SlimDiffSRStudent, scale: int, loaded_kwargs: dict[str, Any], calibration: list[np.ndarray]
) -> list[BenchPath]:
    """Every path this machine can run, built for ``model``."""
    info = cpu_info()

    def resolver(precision: str, runtime: str) -> SuperResolver:
        return SuperResolver(copy.deepcopy(model), scale, "cpu", precision, runtime=runtime, **loaded_kwargs)

    def entry(name: str, r: SuperResolver) -> BenchPath:
        return BenchPath(name, partial(r.super_resolve, pad_multiple=r.multiple), r.description)

    def as_tiles(name: str, r: SuperResolver) -> BenchPath:
        """The image as the engine runs a raster's tiles: global statistics recorded once per
        raster (here once per image, not timed), and as many copies of it side by side as
        the runtime has streams, through the graph with frozen statistics (which OpenVINO
        compiles for the tiles' exact shape: backend.runtime.engines.OpenVinoNetwork)."""
        recorded: dict[str, GlobalStatistics] = {}
        copies = r.parallel_tiles

        def run(lr: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)))[None] * 2 - 1
            up = r.upsample(x)
            key = hashlib.sha1(lr.tobytes()).hexdigest()
            if key not in recorded:
                recorded[key] = r.record_statistics(r.pad(up))
            sr, padded = r.restore(up.expand(copies, -1, -1, -1), r.multiple, recorded[key])
            return r.finish_image(sr[:1], x, padded[:1])

        return BenchPath(f"{name}, tiles side by side", run, r.description, images=copies)

    naive = release_style_copy(model)
    out = [
        BenchPath(
            "release (fp32, NCHW, whole image)", lambda lr: naive_release_forward(naive, lr, scale), "torch"
        )
    ]
    out.append(entry("torch fp32 channels-last", resolver("fp32", "torch")))
    if info.native_bf16:
        out.append(entry("torch bf16", resolver("bf16", "torch")))
    for runtime in available_runtimes():
        fp32 = resolver("fp32", runtime)
        out.append(entry(f"{runtime} fp32", fp32))
        if runtime == "openvino":
            out.append(as_tiles(f"{runtime} fp32", fp32))
        if calibration:
            r = resolver("int8", runtime)
            try:
                r.calibrate(calibration)
            except InferenceError as exc:  # e.g. a network too narrow to quantize: no row
                print(f"({runtime} int8 left out: {exc})", flush=True)
                continue
            out.append(entry(f"{runtime} int8", r))
            if runtime == "openvino":
                out.append(as_tiles(f"{runtime} int8", r))
    auto = resolver("auto", "auto")
    if calibration:
        auto.calibrate(calibration)
    out.append(entry("auto (calibrated on train)", auto))
    if auto.runtime != "torch":

        def engine_style(lr: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
            """As the engine: a fresh auto resolver calibrated on crops of the image itself."""
            r = resolver("auto", "auto")
            h, w = lr.shape[:2]
            s = min(CALIBRATION_SIDE, h, w)
            r.calibrate([lr[y : y + s, x : x + s] for y in (0, h - s) for x in (0, w - s)])
            return partial(r.super_resolve, pad_multiple=r.multiple)

        out.append(
            BenchPath(
                "auto (engine: calibrated on the image)",
                out[-1].run,
                auto.description,
                per_image=engine_style,
            )
        )
    return out


def run(
    size: int, repeat: int, configs: list[str], scale: int = 4, shared: str | Path | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Rows of the table and a note on the data used (``shared``: see ``shared_dir``)."""
    folder = shared_dir(shared)
    data = folder / "data" if folder else None
    pairs = eval_pairs(data / "eval", scale) if data and (data / "eval").is_dir() else []
    calibration = training_crops(data / "train") if data and (data / "train").is_dir() else []
    note = (
        f"error on {len(pairs)} eval crops ({EVAL_SIDE} px, x{scale} bicubic); int8 calibrated on "
        f"{len(calibration)} train crops of {CALIBRATION_SIDE} px"
    )
    lr = timing_image(size // scale)
    mpx = size * size / 1e6
    rows: list[dict[str, Any]] = []
    for name in configs:
        model, kwargs, label = load_config(name, scale)
        params = sum(p.numel() for p in model.parameters())
        flops = flops_per_output_pixel(model.config)
        paths = paths_for(model, scale, kwargs, calibration)
        reference = next(p for p in paths if p.name.startswith("torch fp32"))
        ref_out = [reference.run(pair[1]) for pair in pairs]
        ref_psnr = [psnr_y(o, hr, scale) for o, (_, _, hr) in zip(ref_out, pairs, strict=True)]
        runs = _best_times([partial(p.run, lr) for p in paths], max(1, repeat))
        times = [t / p.images for p, t in zip(paths, runs, strict=True)]
        for p, t in zip(paths, times, strict=True):
            rel = psnr = dpsnr = None
            if pairs:
                outs = [(p.per_image(lr_)(lr_) if p.per_image else p.run(lr_)) for _, lr_, _ in pairs]
                num = sum(float(np.sum((o - r) ** 2)) for o, r in zip(outs, ref_out, strict=True))
                den = sum(float(np.sum(r**2)) for r in ref_out)
                rel = (num / den) ** 0.5
                scores = [psnr_y(o, hr, scale) for o, (_, _, hr) in zip(outs, pairs, strict=True)]
                psnr = float(np.mean(scores))
                dpsnr = psnr - float(np.mean(ref_psnr))
            rows.append(
                dict(
                    config=label,
                    path=p.name,
                    description=p.description,
                    params=params,
                    flops=flops,
                    mpx_s=mpx / t,
                    speedup=times[0] / t,
                    rel_l2=rel,
                    psnr_y=psnr,
                    dpsnr=dpsnr,
                )
            )
            print(format_row(rows[-1]), flush=True)
    return rows, note


def load_config(name: str, scale: int) -> tuple[SlimDiffSRStudent, dict[str, Any], str]:
    """(model, SuperResolver keyword arguments from its weights, label) for a config name:
    'default' is the bundled x4 model (trained weights: its PSNR-Y means something), the
    presets are random-weight members of the family (speed does not depend on weights)."""
    if name == "default":
        from backend.weights import default_weights_path, load_weights

        loaded = load_weights(default_weights_path(scale), scale=scale)
        kwargs = {
            "color_match": loaded.color_match,
            "lr_consistency": loaded.lr_consistency,
            "receptive_margin": loaded.receptive_margin,
        }
        return loaded.model.eval(), kwargs, f"bundled default x{scale}"
    torch.manual_seed(0)
    return SlimDiffSRStudent(PRESETS[name]).eval(), {}, f"{name} (random weights)"


HEADER = (
    "| network | path | runs as | MFLOP/px | output Mpx/s | vs release | rel L2 vs fp32 | PSNR-Y (dB) "
    "| dPSNR-Y vs fp32 |\n|---|---|---|---|---|---|---|---|---|"
)


def format_row(r: dict[str, Any]) -> str:
    def f(key: str, fmt: str) -> str:
        return "-" if r[key] is None else format(r[key], fmt)

    return (
        f"| {r['config']} | {r['path']} | {r['description']} | {r['flops'] / 1e6:.3f} | "
        f"{r['mpx_s']:.3f} | {r['speedup']:.2f}x | {f('rel_l2', '.5f')} | {f('psnr_y', '.3f')} | "
        f"{f('dpsnr', '+.3f')} |"
    )


def header(size: int) -> str:
    import importlib.metadata as md

    versions = [f"torch {torch.__version__}"]
    for package in ("onnxruntime", "openvino"):
        try:
            versions.append(f"{package} {md.version(package)}")
        except md.PackageNotFoundError:
            versions.append(f"{package} not installed")
    info = cpu_info()
    return (
        f"CPU: {info.describe()} (ISA {info.isa}, native bf16: {'yes' if info.native_bf16 else 'no'})\n"
        f"{', '.join(versions)}; torch threads {torch.get_num_threads()}\n"
        f"Model throughput, {size}x{size} output, x4 (best of interleaved rounds after a warm-up)"
    )


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--size", type=int, default=1024, help="output size in pixels (square), at least 256")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--configs",
        default="paper,default",
        help=f"comma list of default (bundled x4 weights) and {sorted(PRESETS)}",
    )
    parser.add_argument("--shared", help="shared data folder (eval, train); default $SLIMDIFFSR_SHARED")
    args = parser.parse_args(argv)
    if args.size < 256:  # the release's way pads to 256 by reflection, which needs more than that
        parser.error("--size must be at least 256")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in PRESETS and c != "default"]
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from default, {', '.join(sorted(PRESETS))}")
    print(header(args.size), flush=True)
    print(HEADER, flush=True)
    _, note = run(args.size, args.repeat, configs, shared=args.shared)
    print(f"({note})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
