"""``slimdiffsr upscale-batch INPUTS OUTPUT_FOLDER``: many rasters, here or on a Dask cluster.

INPUTS is a folder, a glob (quoted) or a text file with one path per line. Each failure
is one line naming the file; the others still run. Exit codes: 0 every file done or
already complete, 1 some failed, 2 bad usage, 130 cancelled.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from backend.engine.batch import DEFAULT_PATTERN
from backend.engine.command import add_run_arguments, run_options
from backend.errors import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, exit_code

HELP = "super-resolve many rasters (a folder, a glob or a list file) into a folder, here or on a cluster"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "inputs",
        help="a folder of rasters, a glob such as 'scenes/*.tif' (quoted), or a text file listing "
        "one raster per line",
    )
    add("output_folder", help="where the outputs go (must exist)")
    add(
        "--pattern",
        default=DEFAULT_PATTERN,
        help=f"output file name; {{stem}}, {{name}} and {{scale}} are replaced (default: {DEFAULT_PATTERN})",
    )
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from backend.engine.batch import list_inputs, run_batch
    from backend.errors import Cancelled, SlimDiffSRError
    from backend.signals import StopRequest

    options = run_options(args)
    bar = None

    def on_progress(done: int, total: int, name: str) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="file", file=sys.stderr, dynamic_ncols=True)
        bar.set_postfix_str(name, refresh=False)
        bar.update(done - bar.n)

    try:
        inputs = list_inputs(args.inputs)
        with StopRequest(force_on_repeat=True) as stop:
            report = run_batch(
                inputs,
                Path(args.output_folder),
                options,
                args.pattern,
                on_progress,
                cancel=lambda: bool(stop),
                log=lambda m: print(m, file=sys.stderr),
            )
    except (Cancelled, KeyboardInterrupt):
        if bar is not None:
            bar.close()
        print("cancelled; finished files are kept, no partial file is left", file=sys.stderr)
        return EXIT_CANCELLED
    except SlimDiffSRError as exc:
        if bar is not None:
            bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    if bar is not None:
        bar.close()
    for name, message in report.failed.items():
        print(f"failed: {name}: {message}", file=sys.stderr)
    print(
        f"{len(report.done)} done, {len(report.skipped)} already complete, {len(report.failed)} failed "
        f"in {report.elapsed_s:.1f} s"
    )
    return EXIT_FAILED if report.failed else EXIT_OK
