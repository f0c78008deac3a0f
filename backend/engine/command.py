"""``slimdiffsr upscale INPUT OUTPUT``: the engine from the command line, without QGIS.

Exit codes: 0 success, 1 failure while running, 2 bad input or usage, 130 cancelled
(Ctrl-C). Errors are one line on stderr; the progress bar is on stderr too, so stdout
carries only the final summary.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import TYPE_CHECKING

from backend.errors import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, one_line

if TYPE_CHECKING:
    from backend.engine.options import UpscaleOptions

HELP = "super-resolve a georeferenced raster into a tiled GeoTIFF (x2/x4/x8)"

__all__ = ["EXIT_BAD_INPUT", "EXIT_CANCELLED", "EXIT_FAILED", "EXIT_OK", "HELP", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("input", help="input raster (GeoTIFF or any raster GDAL reads)")
    add("output", help="output GeoTIFF (.tif); written beside as a temporary file, then renamed")
    add_run_arguments(parser)
    add(
        "--all-bands",
        action="store_true",
        help="every band in groups of three (non-visible bands are out of distribution)",
    )
    add(
        "--batch-size",
        type=int,
        default=None,
        help="tiles per model call (default: 4 on a GPU, 1 on the CPU)",
    )
    add("--nodata", type=float, help="treat this input value as nodata (overrides the file)")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Model, tiling, output and cluster options (shared with upscale-batch)."""
    from backend.runtime.choices import PRECISIONS

    add = parser.add_argument
    add("--weights", help="weights file (.safetensors or release .pkl); default: bundled model")
    add("--scale", type=int, choices=(2, 4, 8), help="scale factor (default: from the weights)")
    add("--bands", help="1-based input bands, e.g. 4,3,2 (default: RGB, else the first three)")
    add(
        "--device",
        default="auto",
        help="auto, cpu, cuda or cuda:N (default: auto; on a cluster each worker picks its own)",
    )
    add(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="compute precision (default: auto = fastest within 1%% of fp32)",
    )
    add(
        "--tile-size",
        type=int,
        help="tile size in input pixels (default: the largest that fits the "
        "memory of the paper student's 768-pixel tiles in fours, at most 2048 output pixels on a GPU "
        "and 1280 on the CPU)",
    )
    add(
        "--overlap",
        type=int,
        help="tile overlap in input pixels (default: twice the weights' measured "
        "receptive margin, at least 64 output pixels; 128 output pixels when they record none)",
    )
    add("--cog", action="store_true", help="write Cloud Optimized GeoTIFF output")
    add("--overviews", action="store_true", help="build internal overviews (average)")
    add("--quiet", action="store_true", help="no progress bar")
    add_cluster_arguments(parser)


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """--scheduler and the options that go with it (shared with upscale-batch)."""
    add = parser.add_argument
    add(
        "--scheduler",
        default=os.environ.get("SLIMDIFFSR_SCHEDULER") or None,
        help="run on a Dask cluster: tcp://HOST:PORT of its scheduler, or local:N for N local worker "
        "processes (default: $SLIMDIFFSR_SCHEDULER, else this machine); see docs/cluster.md",
    )
    add(
        "--region-tiles",
        type=int,
        help="on a cluster: tiles per region side, one task each (default: "
        "regions of about 2048 output pixels)",
    )
    add(
        "--task-resources",
        default="",
        help="on a cluster: resources each task needs, e.g. GPU=1 for workers started with --resources GPU=1",
    )


def parse_resources(text: str) -> dict[str, float]:
    """'GPU=1,MEM=2' -> {'GPU': 1.0, 'MEM': 2.0}."""
    out: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            print(
                f"error: --task-resources {text!r}: write NAME=NUMBER[,NAME=NUMBER], e.g. GPU=1",
                file=sys.stderr,
            )
            raise SystemExit(2) from None
    return out


def run_options(args: argparse.Namespace) -> UpscaleOptions:
    """The engine options from parsed arguments: every argument named like a field of
    :class:`UpscaleOptions` (those of :func:`add_run_arguments` and the command's own), so
    a new option is defined once, as an argument with the field's name."""
    from dataclasses import fields

    from backend.engine.options import UpscaleOptions

    names = {f.name for f in fields(UpscaleOptions)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["task_resources"] = parse_resources(args.task_resources)
    return UpscaleOptions(**values)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `--help` stays fast (torch and rasterio load in seconds).
    # Library warnings (torch, rasterio) are held back while the run goes: on failure the
    # user gets our one line and nothing else; on success each distinct warning follows
    # the summary as one "warning:" line.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        code, summary = _run(args)
    if summary:
        print(summary)
    if code == EXIT_OK:
        for message in _distinct(caught):
            print(f"warning: {message}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> tuple[int, str]:
    from backend.engine import Progress, upscale_raster
    from backend.errors import Cancelled, SlimDiffSRError, exit_code
    from backend.signals import StopRequest

    options = run_options(args)
    bar = None

    def on_progress(p: Progress) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=p.tiles_total, unit="tile", file=sys.stderr, dynamic_ncols=True)
        bar.update(p.tiles_done - bar.n)

    try:
        # Ctrl-C / SIGTERM stop the run after the current batch (the engine then removes its
        # temporary output); a second Ctrl-C stops at once.
        with StopRequest(force_on_repeat=True) as stop:
            report = upscale_raster(
                args.input,
                args.output,
                None,
                options,
                progress=on_progress,
                cancel=lambda: bool(stop),
                log=lambda m: print(m, file=sys.stderr),
            )
    except (Cancelled, KeyboardInterrupt):
        _close(bar)
        print("cancelled; nothing was written", file=sys.stderr)
        return EXIT_CANCELLED, ""
    except SlimDiffSRError as exc:
        _close(bar)
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc), ""
    except MemoryError:
        _close(bar)
        print(
            "error: the computer ran out of memory; lower --tile-size or --batch-size, or close other "
            "programs",
            file=sys.stderr,
        )
        return EXIT_FAILED, ""
    except Exception as exc:  # a bug: still one line, with what to report
        _close(bar)
        detail = one_line(exc) or "no detail"
        print(
            f"error: unexpected {type(exc).__name__}: {detail} (please report this with the command you ran)",
            file=sys.stderr,
        )
        return EXIT_FAILED, ""
    _close(bar)
    w, h = report.output_size
    geo = "" if report.georeferenced else ", no georeferencing (the input has none)"
    return EXIT_OK, (
        f"wrote {report.output} ({w}x{h}, {len(report.bands)} band(s), x{report.scale}, "
        f"{report.tiles} tiles, {report.device}, {report.elapsed_s:.1f} s{geo})"
    )


def _distinct(caught: list[warnings.WarningMessage]) -> list[str]:
    seen: list[str] = []
    for w in caught:
        if issubclass(w.category, DeprecationWarning):
            continue
        text = one_line(w.message)
        if text and text not in seen:
            seen.append(text)
    return seen


def _close(bar: object) -> None:
    if bar is not None:
        bar.close()  # type: ignore[attr-defined]
