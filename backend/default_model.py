"""The bundled default model: its starting point and its model-card evaluation.

``init`` writes the compact student with its last decoder convolution scaled down 20x:
with the input residual, the untrained network then outputs the bicubic image plus a
faint perturbation, so training starts near bicubic quality. (Zeroing it exactly cuts
every gradient upstream of it; measured here, such a start stays at bicubic for hundreds
of steps.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.io import MemoryFile

from backend.inference import SuperResolver
from backend.model import COMPACT_STUDENT, SlimDiffSRStudent
from backend.model.degradation_estimator import DegradationEstimator, EstimatorConfig
from backend.model.lr_consistency import enforce_lr_consistency, enlarge
from backend.regimes import CROP_SIDE, RegimeExperts, image_crops
from backend.training.router import NATIVE_SOFT, RouterSettings
from backend.weights import LoadedWeights, default_weights_path, load_weights, save_safetensors
from devtools.margin import edge_profile, receptive_margin

# Eval images are cropped (centre) to at most this many HR pixels a side, to bound time.
EVAL_MAX_SIDE = 512


def initial_student(seed: int = 0) -> SlimDiffSRStudent:
    torch.manual_seed(seed)
    model = SlimDiffSRStudent(COMPACT_STUDENT)
    last = model.vae.decoder.layers[-1]
    if not isinstance(last, torch.nn.Conv2d) or last.bias is None:
        raise TypeError(f"the decoder ends with {type(last).__name__}, not a convolution with a bias")
    with torch.no_grad():
        last.weight.mul_(0.05)
        last.bias.zero_()
    return model


def _stage_layers(blocks: tuple[int, ...], decoder: bool) -> list[tuple[list[int], list[int]]]:
    """Per stage of a tiny-autoencoder half, (its convolution indexes, its TinyBlock indexes)
    in ``layers`` (:mod:`backend.model.tiny_autoencoder`'s order)."""
    stages, i = [], 2 if decoder else 0
    for stage, n in enumerate(blocks):
        if decoder:
            last = stage == len(blocks) - 1
            tiny = list(range(i, i + n))
            i += n + (0 if last else 1)  # the blocks, then the x2 upsampling
            stages.append(([i], tiny))
            i += 1
        else:
            stages.append(([i], list(range(i + 1, i + 1 + n))))
            i += 1 + n
    return stages


def drop_blocks(
    model: SlimDiffSRStudent, encoder_blocks: tuple[int, ...], decoder_blocks: tuple[int, ...]
) -> SlimDiffSRStudent:
    """The same network with fewer tiny-autoencoder blocks per stage, every kept layer's
    weights copied (a stage keeps its first blocks).

    Why: a block at half the output resolution costs 16x one at the input's (x4), so the
    blocks between the input and output resolutions are most of the compact student's time;
    a trained model without them, fine-tuned from these weights, starts from everything
    else it learned instead of from scratch.
    """
    cfg = model.config
    if len(encoder_blocks) != len(cfg.encoder_blocks) or len(decoder_blocks) != len(cfg.decoder_blocks):
        raise ValueError("the number of stages must stay the same")
    if any(
        n > o
        for n, o in zip(encoder_blocks + decoder_blocks, cfg.encoder_blocks + cfg.decoder_blocks, strict=True)
    ):
        raise ValueError("blocks can only be dropped, not added")
    slim = SlimDiffSRStudent(replace(cfg, encoder_blocks=encoder_blocks, decoder_blocks=decoder_blocks))
    index: dict[str, str] = {}
    for half, old, new in (
        ("encoder", cfg.encoder_blocks, encoder_blocks),
        ("decoder", cfg.decoder_blocks, decoder_blocks),
    ):
        dec = half == "decoder"
        for (old_convs, old_tiny), (new_convs, new_tiny) in zip(
            _stage_layers(old, dec), _stage_layers(new, dec), strict=True
        ):
            # the new stage's layers are the old one's first: the shorter list ends the pairs
            for a, b in zip(old_convs + old_tiny, new_convs + new_tiny, strict=False):
                index[f"vae.{half}.layers.{b}."] = f"vae.{half}.layers.{a}."
        if not dec:  # the latent convolution after the last stage
            index[f"vae.encoder.layers.{len(new) + sum(new)}."] = f"vae.encoder.layers.{len(old) + sum(old)}."
    source = model.state_dict()
    state = {}
    for key in slim.state_dict():
        prefix = next((p for p in index if key.startswith(p)), None)
        state[key] = source[index[prefix] + key[len(prefix) :] if prefix else key]
    slim.load_state_dict(state)
    return slim


@dataclass
class EvalImage:
    name: str
    hr: torch.Tensor  # [1, 3, H, W] in [0, 1], H and W multiples of the scale


def load_eval_images(folder: Path, scale: int, files: list[Path] | None = None) -> list[EvalImage]:
    """Every raster of ``folder`` (or the given ``files`` under it) as RGB in [0, 1] with the
    training data's stretch."""
    from backend.training.data import describe_raster, find_rasters

    images = []
    for path in files if files is not None else find_rasters([folder]):
        source = describe_raster(path)
        with rasterio.open(path) as ds:
            h = min(ds.height, EVAL_MAX_SIDE) // scale * scale
            w = min(ds.width, EVAL_MAX_SIDE) // scale * scale
            window = rasterio.windows.Window((ds.width - w) // 2, (ds.height - h) // 2, w, h)
            values = ds.read(list(source.bands), window=window)
        hr = torch.from_numpy(source.to_unit(values))[None]
        images.append(EvalImage(Path(path).relative_to(folder).as_posix(), hr))
    return images


def lanczos_upsample(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """GDAL's Lanczos resampling (as QGIS users get it), through an in-memory raster."""
    _, c, h, w = lr.shape
    with MemoryFile() as mem, mem.open(driver="GTiff", width=w, height=h, count=c, dtype="float32") as ds:
        ds.write(lr[0].numpy())
        up = ds.read(out_shape=(c, h * scale, w * scale), resampling=Resampling.lanczos)
    return torch.from_numpy(up)[None].clamp(0, 1)


# The LR syntheses of the evaluation: the benchmark (antialiased bicubic), the fixed
# moderate realistic degradation (backend.degradation.realistic), and the other plain
# reductions a product may have gone through (robustness to the kernel).
EVAL_DEGRADATIONS = ("bicubic", "realistic", "bicubic-point", "bilinear", "bilinear-point", "area")


def evaluate(
    weights: Path,
    folder: Path,
    scale: int,
    device: str = "cpu",
    degradations: tuple[str, ...] = EVAL_DEGRADATIONS,
    files: list[Path] | None = None,
) -> dict[str, object]:
    """PSNR/SSIM on Y for bicubic, Lanczos and the model (with and without its LR-consistency
    step) under each LR synthesis; means over the rasters and per raster (PSNR-Y)."""
    from backend.degradation import degrade
    from backend.metrics import psnr, rgb_to_y, ssim_index

    loaded = load_weights(weights, scale=scale)
    resolver = SuperResolver.from_weights(loaded, device, "fp32")  # as the plugin runs it
    images = load_eval_images(folder, scale, files)
    results: dict[str, dict[str, list[float]]] = {}
    regimes: dict[str, list[str]] = {}
    seconds, pixels = 0.0, 0
    for index, image in enumerate(images):
        for kind in degradations:
            lr = degrade(image.hr, scale, kind, seed=1000 + index)
            x = lr * 2 - 1
            start = time.perf_counter()
            with torch.no_grad():
                # degradation-aware weights: the experts mixed for this LR image, as the engine
                chosen = resolver.for_regime(resolver.estimate_regime(image_crops(lr)))
                regimes.setdefault(kind, []).append(chosen.regime_description)
                up = chosen.upsample(x)
                network = chosen.restore(up)[0]
                consistent = enforce_lr_consistency(network, x.to(network.device), scale)
                sr = consistent if loaded.lr_consistency else network
            seconds += time.perf_counter() - start
            pixels += sr.shape[-2] * sr.shape[-1]
            outputs = {
                "bicubic": enlarge(lr, scale).clamp(0, 1),
                "lanczos": lanczos_upsample(lr, scale),
                "model": (sr.cpu() / 2 + 0.5).clamp(0, 1),
                "network-alone": (network.cpu() / 2 + 0.5).clamp(0, 1),
                "with-lr-consistency": (consistent.cpu() / 2 + 0.5).clamp(0, 1),
            }
            y_hr = rgb_to_y(image.hr)
            for method, out in outputs.items():
                y = rgb_to_y(out)
                entry = results.setdefault(f"{kind}/{method}", {"psnr_y": [], "ssim_y": []})
                entry["psnr_y"].append(float(psnr(y, y_hr, border=scale)))
                entry["ssim_y"].append(float(ssim_index(y, y_hr)))
    summary = {
        key: {m: round(float(np.mean(v)), 3) for m, v in metrics.items()} for key, metrics in results.items()
    }
    per_raster = {key: [round(v, 3) for v in metrics["psnr_y"]] for key, metrics in results.items()}
    return {
        "weights": str(weights),
        "scale": scale,
        "images": [im.name for im in images],
        "metrics": summary,
        "per_raster_psnr_y": per_raster,
        "regimes": regimes,
        "model_mpx_per_s_fp32_whole_image": round(pixels / seconds / 1e6, 3),
    }


def gains(report: dict[str, object], method: str = "model") -> dict[str, dict[str, object]]:
    """Per LR synthesis: mean PSNR-Y gain of ``method`` over bicubic and the per-raster gains."""
    metrics = cast(dict[str, dict[str, float]], report["metrics"])
    per_raster = cast(dict[str, list[float]], report["per_raster_psnr_y"])
    out: dict[str, dict[str, object]] = {}
    for key in metrics:
        kind, m = key.split("/")
        if m != method:
            continue
        base = per_raster[f"{kind}/bicubic"]
        out[kind] = {
            "mean": round(metrics[key]["psnr_y"] - metrics[f"{kind}/bicubic"]["psnr_y"], 3),
            "per_raster": [round(a - b, 3) for a, b in zip(per_raster[key], base, strict=True)],
        }
    return out


def finalize(
    trained: Path,
    out: Path,
    lr_consistency: bool = True,
    experts: dict[str, Path] | None = None,
    estimator: Path | None = None,
    prior: dict[str, float] | None = None,
) -> Path:
    """The trained run's weights -> the shipped file (name, no colour match, provenance).

    The compact student learns the image itself (L1 to the HR image), so it ships with
    ``color_match: false``: matching its output's std to the blurrier bicubic input would
    flatten the detail it restores. ``lr_consistency``: one back-projection step after the
    network (it assumes the antialiased bicubic kernel).

    With ``experts`` (regime -> trained weights, fine-tuned from ``trained``) and the
    ``estimator`` (:func:`save_estimator`), the file is degradation-aware: ``trained``
    is the clean regime's network, and the engine mixes the experts per raster
    (:mod:`backend.regimes`); regimes the estimator knows but no expert is given for are
    left out of its estimate. ``prior``: log-odds added to the estimator's output per
    regime (its head's bias: the same shift for every crop and so for the raster's mean).
    The experts' costs are not symmetric (the clean network on aliased LR loses 2-3 dB to
    bicubic, the aliased one on clean LR about 0.1-0.3 dB), so a regime whose expert is
    costly where it is wrong should need more evidence; the shifts are chosen on the
    held-out training files, recorded in the file (``training.estimator.prior``).
    """
    loaded = _complete(trained)
    training = loaded.metadata.get("training") or {}
    if isinstance(training, dict):
        training = {**training, "recipe": "make train-default (tools/train_default.sh)"}
    regime_experts = None
    if experts:
        if estimator is None:
            raise SystemExit("error: experts need the degradation estimator (--estimator)")
        model, summary = load_estimator(estimator)
        if prior:
            try:
                model = model.with_prior(prior)
            except ValueError as exc:
                raise SystemExit(f"error: --prior: {exc}") from None
            summary = {**summary, "prior": {k: float(v) for k, v in prior.items()}}
        states = {"clean": loaded.model.state_dict()}
        runs: dict[str, object] = {}
        for name, path in experts.items():
            expert = _complete(path)
            if expert.scale != loaded.scale or expert.model.config != loaded.model.config:
                raise SystemExit(f"error: {path} is not the same network at x{loaded.scale}")
            states[name] = expert.model.state_dict()
            runs[name] = expert.metadata.get("training") or {}
        names = ("clean", *experts)
        if not set(names) <= set(model.config.regimes):
            raise SystemExit(f"error: the estimator knows {model.config.regimes}, the experts are {names}")
        if set(names) != set(model.config.regimes):
            # A regime left out (no expert shipped for it): the estimate among the others.
            left_out = [r for r in model.config.regimes if r not in names]
            model = model.restricted(tuple(r for r in model.config.regimes if r in names))
            summary = {**summary, "left_out": left_out}
        regime_experts = RegimeExperts(names, states, model)
        training = {"clean": training, "experts": runs, "estimator": summary}
    margin = measure_margin(loaded)
    return save_safetensors(
        loaded.model,
        out,
        loaded.scale,
        name=f"SlimDiffSR compact default x{loaded.scale}",
        input_bands="RGB (or one band replicated)",
        training=training if isinstance(training, dict) else {"summary": str(training)},
        color_match=False,
        lr_consistency=lr_consistency,
        extra={
            "model_card": "MODEL_CARD.md",
            "license": "MIT (weights); training data licences: MANIFEST",
            "receptive_margin": str(margin),
        },
        experts=regime_experts,
    )


def _complete(path: Path) -> LoadedWeights:
    """A finished training run's weights, or exit with what to do."""
    if not Path(path).is_file():
        raise SystemExit(f"{path} does not exist yet; run 'make train-default' again to continue")
    loaded = load_weights(path)
    training = loaded.metadata.get("training") or {}
    if isinstance(training, dict) and training.get("complete") is False:
        raise SystemExit(
            f"{path} is from an unfinished run (step {training.get('steps')} of "
            f"{training.get('steps_planned')}); run 'make train-default' again to continue"
        )
    return loaded


ESTIMATOR_FORMAT = "slimdiffsr-degradation-estimator"


def save_estimator(model: DegradationEstimator, path: Path, summary: dict[str, object]) -> Path:
    """The trained estimator alone (no pickle), until :func:`finalize` packs it with the experts."""
    from safetensors.torch import save_file

    meta = {
        "format": ESTIMATOR_FORMAT,
        "estimator": json.dumps(model.config.to_dict()),
        "training": json.dumps(summary),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return path


def load_estimator(path: Path) -> tuple[DegradationEstimator, dict[str, object]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = dict(f.metadata() or {})
        state = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != ESTIMATOR_FORMAT:
        raise SystemExit(f"error: {path} is not a degradation estimator file")
    model = DegradationEstimator(EstimatorConfig.from_dict(json.loads(meta["estimator"])))
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False), json.loads(meta.get("training", "{}"))


def measure_margin(loaded: LoadedWeights, size: int = 192, tile: int = 128) -> int:
    """The trained model's receptive margin (output px) on a real image, as the engine runs it.

    Recorded in the shipped file so the engine's default overlap fits this model rather
    than the paper's much deeper student.
    """
    margin, _ = receptive_margin(edge_profile(SuperResolver.from_weights(loaded, "cpu", "fp32"), size, tile))
    return margin


def _pair(text: str) -> tuple[str, str]:
    """'REGIME=VALUE' (the --expert and --prior options) -> (regime, value)."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise SystemExit(f"error: --expert and --prior want REGIME=VALUE, not {text!r}")
    return name, value


def _log_odds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"error: --prior wants a number of log-odds, not {value!r}") from None


def unpack(weights: Path, out: Path) -> list[Path]:
    """A degradation-aware file -> each expert as a plain file of its architecture
    (``<regime>_x<scale>.safetensors``) and its estimator (``estimator.safetensors``), so a
    later run can train an expert further from where the shipped one stopped (``--init``)
    and :func:`finalize` can pack the result with the same estimator again."""
    loaded = load_weights(weights)
    if loaded.experts is None:
        raise ValueError(f"{weights.name} holds one network, no experts; train from it directly")
    training = loaded.metadata.get("training")
    training = training if isinstance(training, dict) else {}
    runs = {loaded.experts.names[0]: training.get("clean"), **(training.get("experts") or {})}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for regime in loaded.experts.names:
        loaded.model.load_state_dict(loaded.experts.states[regime])
        run = runs.get(regime)
        written.append(
            save_safetensors(
                loaded.model,
                out / f"{regime}_x{loaded.scale}.safetensors",
                loaded.scale,
                name=f"{loaded.metadata.get('name') or 'student'}, {regime} expert",
                training=run if isinstance(run, dict) else None,
                color_match=False,
            )
        )
    summary = training.get("estimator") or {}
    written.append(save_estimator(loaded.experts.estimator, out / "estimator.safetensors", summary))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.default_model")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="write the untrained compact student (output = bicubic)")
    p.add_argument("--scale", type=int, default=4, choices=(2, 4, 8))
    p.add_argument("--out", required=True)
    d = sub.add_parser("slim", help="trained weights -> the same network with fewer autoencoder blocks")
    d.add_argument("weights")
    d.add_argument("--encoder-blocks", required=True, help="blocks per encoder stage, e.g. 0,0,1")
    d.add_argument("--decoder-blocks", required=True, help="blocks per decoder stage, e.g. 1,0,0")
    d.add_argument("--out", required=True)
    x = sub.add_parser(
        "unpack", help="a file with experts -> each expert and the estimator as files (to train further)"
    )
    x.add_argument("weights", help="a degradation-aware file, e.g. the bundled model")
    x.add_argument("--out", required=True, help="folder")
    f = sub.add_parser("finalize", help="trained run weights -> resources/weights file")
    f.add_argument("trained")
    f.add_argument("out")
    f.add_argument(
        "--no-lr-consistency",
        action="store_true",
        help="ship without the back-projection step (it assumes the antialiased bicubic kernel)",
    )
    f.add_argument(
        "--expert",
        action="append",
        default=[],
        metavar="REGIME=WEIGHTS",
        help="an expert fine-tuned from TRAINED for one LR regime (soft, aliased); repeatable",
    )
    f.add_argument("--estimator", help="the degradation estimator file (the estimator command)")
    f.add_argument(
        "--prior",
        action="append",
        default=[],
        metavar="REGIME=LOGODDS",
        help="shift the estimator's log-odds for a regime (e.g. soft=-1: it needs more evidence); repeatable",
    )
    t = sub.add_parser("estimator", help="train the degradation estimator on data/train")
    t.add_argument("--shared", default="../shared")
    t.add_argument("--seed", type=int, default=2031, help="the experts' split seed (same held-out files)")
    t.add_argument("--out", required=True)
    r = sub.add_parser(
        "router", help="train the router (which mixture of the experts per raster) for a file with experts"
    )
    r.add_argument("weights", help="a file finalized with --expert (its experts label the crops)")
    r.add_argument("--shared", default="../shared")
    r.add_argument("--seed", type=int, default=2031, help="the experts' split seed (same held-out files)")
    r.add_argument("--train-crops", type=int, default=2000)
    r.add_argument("--val-crops", type=int, default=300, help="crops of the held-out files (its report)")
    r.add_argument(
        "--crop",
        type=int,
        default=CROP_SIDE,
        help=f"LR pixels a side of each crop (default {CROP_SIDE}, the engine's); smaller at x8, where "
        "64 LR pixels are 512 HR pixels, more than most training files have",
    )
    r.add_argument(
        "--native-soft",
        type=float,
        default=NATIVE_SOFT,
        help=f"share of HR crops blurred before reduction, natively soft imagery (default {NATIVE_SOFT})",
    )
    r.add_argument(
        "--colour-augment",
        type=float,
        default=0.0,
        help="share of HR crops recoloured (band order, grey, gamma, contrast), as train --colour-augment",
    )
    r.add_argument(
        "--epochs",
        type=int,
        default=RouterSettings.epochs,
        help=f"passes over the labelled crops (default {RouterSettings.epochs}; fewer for more crops, "
        "the same number of steps)",
    )
    r.add_argument("--cache", required=True, help="folder for the labelled crops (a rerun resumes from it)")
    r.add_argument("--out", required=True)
    e = sub.add_parser("evaluate", help="model-card metrics on ../shared/data/eval")
    e.add_argument("--scale", type=int, default=4, choices=(2, 4, 8))
    e.add_argument("--weights", help="default: the bundled model for --scale")
    e.add_argument("--shared", default="../shared")
    e.add_argument("--json", help="also write the results here")
    e.add_argument(
        "--held-out-seed",
        type=int,
        help="evaluate on the training files a run with this seed held out (data/train), not on eval/; "
        "for choices such as the LR-consistency step, which must not be tuned on eval/",
    )
    args = parser.parse_args(argv)
    if args.command == "init":
        save_safetensors(initial_student(), args.out, args.scale, name="compact student, untrained")
        print(f"wrote {args.out}")
        return 0
    if args.command == "slim":
        loaded = load_weights(args.weights)
        try:
            slim = drop_blocks(
                loaded.model,
                tuple(int(n) for n in args.encoder_blocks.split(",")),
                tuple(int(n) for n in args.decoder_blocks.split(",")),
            )
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
        save_safetensors(
            slim, args.out, loaded.scale, name=f"{loaded.metadata.get('name') or 'student'}, slimmed"
        )
        print(f"wrote {args.out}")
        return 0
    if args.command == "unpack":
        try:
            written = unpack(Path(args.weights), Path(args.out))
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
        print("wrote " + ", ".join(str(p) for p in written))
        return 0
    if args.command == "finalize":
        experts = {name: Path(value) for name, value in map(_pair, args.expert)}
        estimator = Path(args.estimator) if args.estimator else None
        prior = {name: _log_odds(value) for name, value in map(_pair, args.prior)}
        out = finalize(
            Path(args.trained), Path(args.out), not args.no_lr_consistency, experts, estimator, prior
        )
        print(f"wrote {out}")
        return 0
    if args.command == "estimator":
        from backend.training.estimator import EstimatorSettings, train_estimator

        model, summary = train_estimator(
            Path(args.shared) / "data" / "train", EstimatorSettings(seed=args.seed)
        )
        print(json.dumps(summary))
        print(f"wrote {save_estimator(model, Path(args.out), summary)}")
        return 0
    if args.command == "router":
        from backend.training.router import train_router

        model, summary = train_router(
            Path(args.shared) / "data" / "train",
            _complete(Path(args.weights)),
            RouterSettings(
                seed=args.seed,
                train_crops=args.train_crops,
                val_crops=args.val_crops,
                crop=args.crop,
                native_soft_prob=args.native_soft,
                colour_augment=args.colour_augment,
                epochs=args.epochs,
            ),
            Path(args.cache),
        )
        print(json.dumps(summary))
        print(f"wrote {save_estimator(model, Path(args.out), summary)}")
        return 0
    weights = Path(args.weights) if args.weights else default_weights_path(args.scale)
    if args.held_out_seed is not None:
        from backend.training.data import find_rasters, stable_split

        folder = Path(args.shared) / "data" / "train"
        held_out = stable_split(find_rasters([folder]), 0.1, args.held_out_seed)[1]
        report = evaluate(weights, folder, args.scale, files=held_out)
    else:
        report = evaluate(weights, Path(args.shared) / "data" / "eval", args.scale)
    text = json.dumps(report, indent=2)
    print(text)
    for method in ("model", "network-alone", "with-lr-consistency"):
        print(f"PSNR-Y gain over bicubic, {method}:")
        for kind, g in gains(report, method).items():
            print(f"  {kind:20s} {g['mean']:+.3f} dB  per raster {g['per_raster']}")
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
