"""The backend worker process: one JSON request in, JSON lines out.

QGIS never imports torch or rasterio (they bundle their own GDAL/PROJ and have crashed
QGIS before); the plugin starts ``<env python> -m backend.worker`` from the plugin folder
instead and talks to it over pipes:

* stdin, first line: the request, e.g. ``{"type": "upscale", "input": ..., "output": ...}``;
  later lines: ``{"type": "cancel"}``. End of stdin also cancels: a worker whose parent
  died must not keep a GPU busy.
* stdout: one JSON object per line, ``type`` one of ``hello`` (sent at start, proves the
  environment runs), ``log`` (``level`` debug, info, warning, or trace: the traceback of an
  unexpected error), ``progress``, ``result``, ``error``, ``cancelled``.
  Anything else a library prints is redirected to stderr so it cannot break the protocol.
* SIGTERM asks for cancellation too; the client escalates to SIGKILL after a grace period.

Exit codes: 0 result sent, 1 error sent, 2 bad request, 130 cancelled.

``python -m backend.worker --probe`` prints the environment report (for troubleshooting).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from backend.errors import Cancelled, SlimDiffSRError, UserInputError

if TYPE_CHECKING:  # the heavy modules are imported by the handlers, once a request needs them
    from backend.engine import UpscaleOptions
    from backend.inference import SuperResolver

PROTOCOL_VERSION = 1
EXIT_OK, EXIT_ERROR, EXIT_BAD_REQUEST, EXIT_CANCELLED = 0, 1, 2, 130


class RequestError(UserInputError, ValueError):
    """A request the worker cannot interpret (a plugin/backend version mismatch)."""


class CancelledError(Cancelled):
    """Raised from progress callbacks once cancellation was requested."""

    def __init__(self, message: str = "cancelled; no output was written") -> None:
        super().__init__(message)


class Channel:
    """Writes protocol messages, one JSON object per line, to the real stdout.

    Messages come from the engine's threads as well as the main thread, hence the lock.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"type": kind, **fields}, default=str, allow_nan=False)
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (BrokenPipeError, ValueError):  # the client is gone: nobody to tell
                pass

    def log(self, message: str, level: str = "info") -> None:
        self.send("log", level=level, message=message)


class CancelToken:
    """Set by a ``cancel`` message, end of stdin, or SIGTERM; polled by the engine."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()


def _listen_for_cancel(stdin: IO[str], token: CancelToken) -> None:
    for line in stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("type") == "cancel":
            token.set()
            return
    token.set()  # stdin closed: the client is gone or wants us to stop


def jsonable(value: Any) -> Any:
    """Dataclasses, paths, numpy scalars and tuples -> plain JSON values (NaN -> None)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return jsonable(value.item())
        except (TypeError, ValueError):
            pass
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return jsonable(value.to_dict())
    return str(value)


def progress_fields(update: Any) -> dict[str, Any]:
    """The engine's progress object (or a bare fraction) -> the protocol's fields."""
    if isinstance(update, int | float):
        return {"fraction": float(update)}
    data = jsonable(update)
    if not isinstance(data, dict):
        return {"message": str(data)}
    fields: dict[str, Any] = {}
    fraction = data.get("fraction")
    if isinstance(fraction, int | float):
        fields["fraction"] = max(0.0, min(1.0, float(fraction)))
    parts = []
    done = data.get("tiles_done", data.get("done"))
    total = data.get("tiles_total", data.get("total", data.get("tiles")))
    if isinstance(done, int) and isinstance(total, int):
        parts.append(f"tile {done}/{total}")
    eta = data.get("eta_s", data.get("eta_seconds", data.get("eta")))
    if isinstance(eta, int | float) and eta > 0:
        parts.append(f"about {format_duration(eta)} left")
    if data.get("message"):
        parts.insert(0, str(data["message"]))
    elif data.get("stage") not in (None, "tiles"):
        parts.insert(0, str(data["stage"]))
    if parts:
        fields["message"] = ", ".join(parts)
    return fields


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# -- request handlers -------------------------------------------------------------------


def probe() -> dict[str, Any]:
    """What this environment can do: versions, devices. Imports the heavy packages."""
    from backend import __version__

    info: dict[str, Any] = {
        "backend": __version__,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
    }
    import numpy
    import rasterio
    import torch

    info.update(numpy=numpy.__version__, rasterio=rasterio.__version__, gdal=rasterio.__gdal_version__)
    info["torch"] = torch.__version__
    info["cuda_build"] = torch.version.cuda
    info["cuda_available"] = bool(torch.cuda.is_available())
    info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def request_options(request: dict[str, Any], options_type: type) -> dict[str, Any]:
    """The request's options (None: the default) as keyword arguments of the dataclass
    ``options_type``; an option it lacks is an error, not ignored (plugin and backend of
    different versions)."""
    known = {f.name for f in dataclasses.fields(options_type)}
    wanted = {k: v for k, v in request.get("options", {}).items() if v is not None}
    unknown = sorted(set(wanted) - known)
    if unknown:
        raise RequestError(
            f"the backend does not support the option(s) {', '.join(unknown)}; update the plugin and "
            "backend together (make install)"
        )
    return wanted


def _engine_options(request: dict[str, Any]) -> UpscaleOptions:
    """Request fields -> ``UpscaleOptions`` (JSON's band list made the engine's tuple)."""
    from backend.engine import UpscaleOptions

    wanted = request_options(request, UpscaleOptions)
    if isinstance(wanted.get("bands"), list):
        wanted["bands"] = tuple(int(b) for b in wanted["bands"])
    return UpscaleOptions(**wanted)


def load_model(
    weights: str | Path | None, scale: int | None, device: str, precision: str, channel: Channel
) -> SuperResolver:
    """Weights -> SuperResolver, logging the device and precision before the long part
    starts."""
    from backend.inference import SuperResolver
    from backend.weights import default_weights_path, load_weights

    channel.send("progress", fraction=0.0, message="loading the model")
    loaded = load_weights(weights or default_weights_path(scale or 4), scale=scale)
    resolver = SuperResolver.from_weights(loaded, device, precision)
    channel.log(f"device: {resolver.description}")
    channel.log(f"model: {loaded.description}")
    return resolver


def check_job(input: str, output: str, options: UpscaleOptions) -> None:
    """The engine's checks of the paths, the input and the options, made before the model
    loads: a bad input is refused in a fraction of a second instead of after the seconds
    torch and the weights take (the engine makes them again when it runs)."""
    from backend.engine.job import Job, gdal_env

    with gdal_env():
        Job.open(input, output, options)


def handle_upscale(request: dict[str, Any], channel: Channel, cancel: CancelToken) -> dict[str, Any]:
    from backend.engine import upscale_raster

    for key in ("input", "output"):
        if not request.get(key):
            raise RequestError(f"the upscale request has no '{key}'")
    options = _engine_options(request)
    if not options.scheduler:  # on a cluster the engine checks where the data is
        check_job(request["input"], request["output"], options)
    resolver: SuperResolver | None = None
    if options.scheduler:  # the cluster's workers load the model; the log names them and their devices
        channel.send("progress", fraction=0.0, message=f"connecting to {options.scheduler}")
    else:
        resolver = load_model(options.weights, options.scale, options.device, options.precision, channel)
    if cancel():
        raise CancelledError

    def on_progress(update: Any) -> None:
        channel.send("progress", **progress_fields(update))

    report = upscale_raster(
        request["input"],
        request["output"],
        resolver,
        options,
        progress=on_progress,
        cancel=cancel,
        log=channel.log,
    )
    # A cancel that arrives after the engine's last check finds the output complete: it is
    # reported as done, never deleted (the previous file at that path is already replaced,
    # so deleting would lose both).
    result: dict[str, Any] = jsonable(report)
    # The engine's name: the weights' own, with the expert mixture chosen for this raster.
    result["model"] = report.model
    return result


def handle_assess(request: dict[str, Any], channel: Channel, cancel: CancelToken) -> dict[str, Any]:
    from backend.quality import AssessOptions, assess

    options = request_options(request, AssessOptions)

    def on_progress(fraction: float, message: str = "") -> None:
        if cancel():
            raise CancelledError
        channel.send("progress", fraction=fraction, **({"message": message} if message else {}))

    report = assess(request["input"], AssessOptions(**options), progress=on_progress, log=channel.log)
    result: dict[str, Any] = jsonable(report)
    return result


def handle_prepare(request: dict[str, Any], channel: Channel, cancel: CancelToken) -> dict[str, Any]:
    """The bundled models made ready for this machine (the setup's last step): each loaded
    as a raster would load it (``device``/``precision`` of the request, default auto), which
    checks its fast path, and its CPU runtime's graphs exported. The first raster then
    starts without the traces (12.9 s for x4, whose architecture is traced, and 2.1 s for
    x8, which shares it, on a 2-core AMD EPYC family 25 model 1)."""
    from backend.weights import default_weights_path

    prepared: dict[str, Any] = {}
    for scale in (4, 8):
        if cancel():
            raise CancelledError
        if not default_weights_path(scale).is_file():
            continue
        started = time.monotonic()
        resolver = load_model(
            None, scale, str(request.get("device", "auto")), str(request.get("precision", "auto")), channel
        )
        graphs = resolver.prepare_graphs()
        seconds = round(time.monotonic() - started, 1)
        what = f"{len(graphs)} {resolver.runtime} graphs exported" if graphs else "nothing to export"
        channel.log(f"x{scale}: {resolver.description}; {what} ({seconds} s)")
        prepared[f"x{scale}"] = {"device": resolver.description, "graphs": len(graphs), "seconds": seconds}
    return prepared


HANDLERS: dict[str, Callable[[dict[str, Any], Channel, CancelToken], dict[str, Any]]] = {
    "upscale": handle_upscale,
    "assess": handle_assess,
    "prepare": handle_prepare,
    "probe": lambda request, channel, cancel: probe(),
}


def _is_cancellation(exc: BaseException) -> bool:
    return isinstance(exc, Cancelled | KeyboardInterrupt)


def describe_failure(exc: BaseException) -> str:
    """An unexpected exception -> one line that says what happened and what to try."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
    if name == "OutOfMemoryError" or "out of memory" in text.lower():
        return (
            f"the GPU ran out of memory ({text[:160]}); lower the tile size or the batch size, or use "
            "device 'cpu'"
        )
    if isinstance(exc, ModuleNotFoundError):
        return (
            f"the backend environment ({sys.executable}) lacks the package '{exc.name}'; run 'make install' "
            "in the plugin folder to (re)create it"
        )
    if isinstance(exc, MemoryError):
        return "the computer ran out of memory; lower the tile size or close other programs"
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot access {exc.filename}: {exc.strerror or text}; check the path and free disk space"
    return f"unexpected {name}: {text[:300]} (the traceback is in QGIS's Log Messages panel, SlimDiffSR tab)"


def serve(stdin: IO[str], stdout: IO[str], install_signals: bool = True) -> int:
    """Answer one request from ``stdin``; returns the exit code."""
    channel = Channel(stdout)
    cancel = CancelToken()
    channel.send("hello", protocol=PROTOCOL_VERSION, pid=os.getpid(), python=sys.version.split()[0])
    if install_signals:
        signal.signal(signal.SIGTERM, lambda signum, frame: cancel.set())
    line = stdin.readline()
    try:
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError("not an object")
    except ValueError:
        channel.send("error", message=f"the worker received an invalid request line: {line[:100]!r}")
        return EXIT_BAD_REQUEST
    handler = HANDLERS.get(str(request.get("type")))
    if handler is None:
        channel.send("error", message=f"unknown request type {request.get('type')!r}; update the backend")
        return EXIT_BAD_REQUEST
    threading.Thread(target=_listen_for_cancel, args=(stdin, cancel), daemon=True).start()
    started = time.monotonic()
    try:
        result = handler(request, channel, cancel)
    except BaseException as exc:  # every failure must reach the client as a message
        if _is_cancellation(exc) or cancel():
            channel.send("cancelled", message="cancelled; no output was written")
            return EXIT_CANCELLED
        if isinstance(exc, SlimDiffSRError):
            channel.send("error", message=str(exc))
            return EXIT_BAD_REQUEST if isinstance(exc, RequestError) else EXIT_ERROR
        # For whoever reports the bug; not in the run's output, which shows the one line below
        channel.log("".join(traceback.format_exception(exc)).rstrip(), level="trace")
        channel.send("error", message=describe_failure(exc))
        return EXIT_ERROR
    channel.send("result", elapsed_s=round(time.monotonic() - started, 3), result=result)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--probe"]:
        print(json.dumps(probe(), indent=2))
        return EXIT_OK
    # Keep the protocol stream private: libraries that print must not corrupt it.
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    if str(Path(__file__).resolve().parent.parent) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from backend.runtime.memory import prefer_huge_pages

    prefer_huge_pages()  # before a request's handler imports torch
    stdin = open(sys.stdin.fileno(), encoding="utf-8", closefd=False)
    return serve(stdin, protocol_out)


if __name__ == "__main__":
    sys.exit(main())
