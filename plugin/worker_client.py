"""Run a backend request in the worker process and relay what it says to a feedback object.

Standard library only, on purpose: this module runs inside QGIS, where importing torch or
rasterio (with their own GDAL/PROJ builds) has crashed QGIS. It is also what makes the
client testable without QGIS: ``feedback`` is anything with the methods of
``QgsProcessingFeedback`` that we call (isCanceled, setProgress, setProgressText,
pushInfo, pushDebugInfo, pushWarning).

Protocol (see ``backend/worker.py``): request as one JSON line on stdin, JSON lines back on
stdout; cancel = ``{"type": "cancel"}`` on stdin, then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

ENV_VAR = "SLIMDIFFSR_PYTHON"
CANCEL_GRACE_S = 5.0
KILL_GRACE_S = 3.0
PROGRESS_TEXT_INTERVAL_S = 3.0
# Variables that point the child at QGIS's own Python, GDAL or PROJ: the backend
# environment has its own, and mixing them is the classic "proj.db from another PROJ" crash.
DROPPED_PREFIXES = ("PROJ_", "GDAL_", "QGIS_", "PYTHON", "CPL_", "GDAL", "OGR_")
DROPPED_NAMES = ("LD_LIBRARY_PATH", "LD_PRELOAD", "DYLD_LIBRARY_PATH", "VIRTUAL_ENV", "CONDA_PREFIX")


class WorkerError(RuntimeError):
    """The request failed; the message is one line meant for the user."""


class WorkerCancelledError(WorkerError):
    """The user cancelled; the worker stopped and wrote no output."""


class Feedback(Protocol):
    def isCanceled(self) -> bool: ...  # noqa: N802 - QGIS naming
    def setProgress(self, progress: float) -> None: ...  # noqa: N802
    def setProgressText(self, text: str) -> None: ...  # noqa: N802
    def pushInfo(self, info: str) -> None: ...  # noqa: N802
    def pushDebugInfo(self, info: str) -> None: ...  # noqa: N802
    def pushWarning(self, warning: str) -> None: ...  # noqa: N802


def plugin_dir() -> Path:
    """The plugin folder (the repository root; a symlink in the QGIS profile points here)."""
    return Path(__file__).resolve().parent.parent


def venv_python(root: Path) -> Path:
    if sys.platform == "win32":
        return root / ".venv" / "Scripts" / "python.exe"
    return root / ".venv" / "bin" / "python"


SETUP_NAME = "Set up SlimDiffSR backend"
SETUP_ALGORITHM = "slimdiffsr:setup"
SETUP_HINT = f"run Processing Toolbox > SlimDiffSR > '{SETUP_NAME}' ({SETUP_ALGORITHM}) once"


def how_to_fix(root: Path) -> str:
    return (
        f"{SETUP_HINT}, or point the SLIMDIFFSR_PYTHON environment variable or Processing > Options > "
        "Providers > SlimDiffSR > 'Backend Python' at the python of an environment with its packages"
    )


def locate_python(
    setting: str | None = None, root: Path | None = None, env_dir: Path | None = None
) -> tuple[Path, str]:
    """The backend environment's python and where it came from.

    Order: the SLIMDIFFSR_PYTHON variable, the Processing setting, the environment the
    setup algorithm made in the QGIS profile (``env_dir``, once its setup finished), then
    the ``.venv`` of a development checkout (``make install``). A configured path that does
    not exist is an error (not a silent fallback): the user asked for that environment.
    """
    from .backend_env import env_python, is_set_up

    root = root or plugin_dir()
    candidates = [
        (os.environ.get(ENV_VAR, "").strip(), f"the {ENV_VAR} environment variable"),
        ((setting or "").strip(), "the Processing setting 'Backend Python'"),
    ]
    for value, origin in candidates:
        if value:
            path = Path(value).expanduser()
            if not (path.is_file() and os.access(path, os.X_OK)):
                raise WorkerError(
                    f"the backend python set by {origin} does not exist: {path}; fix or clear it"
                )
            return path, origin
    if env_dir is not None and is_set_up(env_dir):
        return env_python(env_dir), "the environment made by the setup algorithm"
    path = venv_python(root)
    if path.is_file():
        return path, "the plugin's .venv"
    if env_dir is not None and env_dir.exists():
        raise WorkerError(
            f"the SlimDiffSR backend environment {env_dir} is incomplete (its setup did not finish); "
            f"{SETUP_HINT.replace(' once', ' again')}"
        )
    where = env_python(env_dir) if env_dir is not None else path
    raise WorkerError(
        f"the SlimDiffSR backend environment was not found ({where} is missing); {how_to_fix(root)}"
    )


def clean_environment(root: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's environment without QGIS/GDAL/PROJ/Python settings, plus our own."""
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.startswith(DROPPED_PREFIXES) and k not in DROPPED_NAMES
    }
    env["PYTHONPATH"] = str(root)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def process_group_kwargs(platform: str = sys.platform) -> dict[str, Any]:
    """Its own process group (POSIX) so that a signal reaches the child's children too; on
    Windows a new process group and no console window."""
    if platform == "win32":
        group = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        return {"creationflags": group | getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {"start_new_session": True}


def start_process(cmd: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    """``cmd`` with UTF-8 text pipes (undecodable bytes replaced: a library's stray output
    must not stop the exchange) in its own process group; ``kwargs`` go to ``Popen``."""
    return subprocess.Popen(
        cmd, text=True, encoding="utf-8", errors="replace", **process_group_kwargs(), **kwargs
    )


class _Session:
    """One running worker: process, reader threads and the state of the exchange."""

    def __init__(self, python: Path, root: Path) -> None:
        try:
            self.proc = start_process(
                [str(python), "-m", "backend.worker"],
                cwd=str(root),
                env=clean_environment(root),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=1,
            )
        except OSError as exc:
            raise WorkerError(
                f"cannot start the backend python {python} ({exc.strerror}); {how_to_fix(root)}"
            ) from None
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_thread.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if not isinstance(message, dict):
                message = {"type": "log", "level": "debug", "message": line}
            self.messages.put(message)
        self.messages.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.strip():
                self.stderr_tail.append(line.rstrip())

    def send(self, message: dict[str, Any]) -> bool:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def signal(self, sig: int) -> None:
        if self.proc.poll() is not None:
            return
        try:
            if sys.platform != "win32":
                os.killpg(self.proc.pid, sig)
            elif sig == getattr(signal, "SIGKILL", None):
                self.proc.kill()
            else:
                self.proc.terminate()
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    def last_stderr(self) -> str:
        self._stderr_thread.join(timeout=1.0)
        for line in reversed(self.stderr_tail):
            if line.strip() and not line.startswith(("Traceback", "  ")):
                return line.strip()[:300]
        return "no error message"


def _relay(
    message: dict[str, Any], feedback: Feedback, last_text: list[float], trace: Callable[[str], None]
) -> None:
    kind = message.get("type")
    if kind == "progress":
        fraction = message.get("fraction")
        if isinstance(fraction, int | float):
            feedback.setProgress(max(0.0, min(100.0, 100.0 * float(fraction))))
        text = message.get("message")
        now = time.monotonic()
        if text and now - last_text[0] >= PROGRESS_TEXT_INTERVAL_S:
            last_text[0] = now
            feedback.setProgressText(str(text))
    elif kind == "log":
        text = str(message.get("message", ""))
        level = message.get("level", "info")
        if level == "trace":
            trace(text)
        elif level == "debug":
            feedback.pushDebugInfo(text)
        elif level == "warning":
            feedback.pushWarning(text)
        else:
            feedback.pushInfo(text)


def run_request(
    request: dict[str, Any],
    feedback: Feedback,
    python: Path | None = None,
    root: Path | None = None,
    setting: str | None = None,
    env_dir: Path | None = None,
    trace: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Send ``request`` to a fresh worker; return its result or raise :class:`WorkerError`.

    Blocks the calling thread (a Processing task thread, never the GUI thread) while
    polling ``feedback.isCanceled()`` ten times a second. ``trace`` receives the traceback
    of an unexpected worker error (default: the feedback's debug output); the error itself
    is only raised, never also pushed to ``feedback``, since QGIS shows the exception.
    """
    root = root or plugin_dir()
    if python is None:
        python, origin = locate_python(setting, root, env_dir)
        feedback.pushDebugInfo(f"backend python: {python} (from {origin})")
    session = _Session(python, root)
    outcome: dict[str, Any] | None = None
    said_hello = False
    cancel_sent_at: float | None = None
    terminated_at: float | None = None
    last_text = [0.0]
    session.send(request)
    try:
        while True:
            try:
                message = session.messages.get(timeout=0.1)
            except queue.Empty:
                message = {}
            if message is None:
                break
            kind = message.get("type")
            if kind == "hello":
                said_hello = True
            elif kind in ("result", "error", "cancelled"):
                outcome = message
            elif message:
                _relay(message, feedback, last_text, trace or feedback.pushDebugInfo)
            now = time.monotonic()
            if feedback.isCanceled() and cancel_sent_at is None:
                cancel_sent_at = now
                feedback.pushInfo("cancelling: asking the worker to stop")
                if not session.send({"type": "cancel"}):
                    session.signal(signal.SIGTERM)
            if cancel_sent_at is not None and terminated_at is None and now - cancel_sent_at > CANCEL_GRACE_S:
                terminated_at = now
                session.signal(signal.SIGTERM)
            if terminated_at is not None and now - terminated_at > KILL_GRACE_S:
                session.signal(getattr(signal, "SIGKILL", signal.SIGTERM))
                break
        try:
            code = session.proc.wait(timeout=KILL_GRACE_S + CANCEL_GRACE_S)
        except subprocess.TimeoutExpired:
            session.signal(getattr(signal, "SIGKILL", signal.SIGTERM))
            code = session.proc.wait()
    finally:
        if session.proc.poll() is None:
            session.signal(getattr(signal, "SIGKILL", signal.SIGTERM))
            session.proc.wait()
        session.close()

    if outcome is not None and outcome.get("type") == "result":
        return dict(outcome.get("result") or {})  # finished before the cancel arrived: complete
    if cancel_sent_at is not None or (outcome or {}).get("type") == "cancelled":
        raise WorkerCancelledError("cancelled by the user; no output was written")
    if outcome is not None and outcome.get("type") == "error":
        raise WorkerError(str(outcome.get("message") or "the worker reported an error without a message"))
    if not said_hello:
        raise WorkerError(
            f"the backend environment {python} could not start the worker (exit code {code}: "
            f"{session.last_stderr()}); {how_to_fix(root)}"
        )
    raise WorkerError(
        f"the SlimDiffSR worker stopped unexpectedly (exit code {code}: {session.last_stderr()}); "
        "if it was out of memory, lower the tile size or use another device"
    )
