"""Create, check and find the backend environment (the Python that runs the worker).

Standard library only, and no ``qgis`` import: the same code runs inside QGIS (the
*Set up SlimDiffSR backend* algorithm, ``slimdiffsr:setup``) and from a shell
(``python3 -m plugin.backend_env``, which ``make install`` calls), so there is one way to
create the environment. It must work where users are: Windows (OSGeo4W, ``Scripts\\python.exe``),
macOS (QGIS.app) and any Linux, without root.

An environment counts as set up only once it carries :data:`MARKER`, written after pip
finished, the packages imported, a one-tile self-test through the real worker passed and
the bundled models were prepared for this CPU (their graphs exported, through the worker).
Anything that stops earlier (cancel, a pip failure, a crash) leaves no marker, so a
half-made environment never looks healthy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any

from .worker_client import (
    SETUP_ALGORITHM,
    SETUP_HINT,
    SETUP_NAME,
    WorkerError,
    clean_environment,
    run_request,
    start_process,
)

__all__ = ["SETUP_ALGORITHM", "SETUP_HINT", "SETUP_NAME", "EnvError", "setup_environment"]
MARKER = "slimdiffsr-env.json"
MIN_PYTHON = (3, 10)
TORCH_BUILDS = ("auto", "cpu", "cuda")
# PyTorch's own index of CPU-only wheels: on Linux and Windows the package index's torch is
# the CUDA build (about 4.9 GB installed) or, on Windows, CPU-only; this one is ~0.2 GB.
TORCH_CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"
INDEX_PROBE_TIMEOUT_S = 5.0
# pip for Pythons that lack ensurepip (Debian and Ubuntu without python3-venv): a pinned
# wheel from the wheelhouse or the package index, checked against its hash.
PIP_WHEEL = "pip-26.3-py3-none-any.whl"
PIP_WHEEL_SHA256 = "f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13"
PIP_SIMPLE_INDEX = "https://pypi.org/simple/pip/"
KILL_GRACE_S = 5.0


class EnvError(RuntimeError):
    """Setting up failed; the message is one line: what, why, what to do."""


class SetupCancelledError(EnvError):
    """The user cancelled; pip was stopped and nothing half-made is left marked healthy."""


# -- paths -------------------------------------------------------------------------------------


def env_python(env_dir: Path, platform: str = sys.platform) -> Path:
    """The interpreter inside a venv: ``Scripts\\python.exe`` on Windows, ``bin/python`` elsewhere
    (the type of ``env_dir`` is kept, so Windows paths can be checked on any system)."""
    if platform == "win32":
        return env_dir / "Scripts" / "python.exe"
    return env_dir / "bin" / "python"


def profile_env_dir(profile_dir: Path) -> Path:
    """Where the setup algorithm puts the environment: in the QGIS profile, not the plugin
    folder, because installing a plugin update replaces the plugin folder."""
    return Path(profile_dir) / "slimdiffsr" / "env"


def base_python_candidates(
    platform: str = sys.platform,
    exec_prefix: str = sys.exec_prefix,
    executable: str = sys.executable,
    version: tuple[int, int] = (sys.version_info[0], sys.version_info[1]),
) -> list[PurePath]:
    """Where QGIS's own Python interpreter may be, most likely first.

    Inside QGIS ``sys.executable`` is usually the QGIS program (``qgis-bin.exe``,
    ``qgis_process.bin``, ``QGIS.app/Contents/MacOS/QGIS``), not a Python: the interpreter
    that goes with the embedded Python lies under ``sys.exec_prefix`` (OSGeo4W:
    ``apps\\Python312\\python.exe``; QGIS.app: ``Contents/MacOS/bin/python3``; Linux:
    ``/usr/bin/python3.X``). Embedded Python guesses ``sys.executable`` from ``PATH``, which
    may name another Python (pyenv, conda): it comes last.
    """
    major, minor = version
    here = platform == sys.platform
    kind: type[PurePath] = Path if here else (PureWindowsPath if platform == "win32" else PurePosixPath)
    prefix = kind(exec_prefix)
    found: list[PurePath] = []
    if platform == "win32":
        found += [prefix / "python.exe", prefix / "python3.exe"]
    else:
        names = (f"python{major}.{minor}", f"python{major}", "python")
        found += [prefix / "bin" / name for name in names]
    # Embedded Python guesses sys.executable from PATH: only a fallback.
    if kind(executable).name.lower().startswith("python"):
        found.append(kind(executable))
        for name in names[:2] if here else ():  # PATH describes this machine only
            located = shutil.which(name)
            if located:
                found.append(Path(located))
    unique: list[PurePath] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def find_base_python() -> Path | None:
    """The first existing candidate of :func:`base_python_candidates`."""
    for path in base_python_candidates():
        if Path(path).is_file():
            return Path(path)
    return None


def read_marker(env_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((Path(env_dir) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_set_up(env_dir: Path) -> bool:
    """Cheap (no process started): the environment finished its setup once."""
    return env_python(Path(env_dir)).is_file() and read_marker(env_dir) is not None


def folder_size(path: Path) -> int:
    """Bytes under ``path`` (links not followed)."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


# -- requirements --------------------------------------------------------------------------------


def requirement_lines(files: Sequence[Path]) -> list[str]:
    """Requirement lines without comments (markers kept: pip evaluates them)."""
    lines: list[str] = []
    for file in files:
        for line in Path(file).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                lines.append(line)
    return lines


def requirement_name(line: str) -> str:
    for i, char in enumerate(line):
        if not (char.isalnum() or char in "-_."):
            return line[:i]
    return line


def required_distributions(lines: Sequence[str]) -> list[tuple[str, bool]]:
    """The distributions a healthy environment must hold, each with ``conditional``: True
    when every line naming it has an environment marker (pip may rightly have skipped it).

    Distribution names are checked, not guessed module names: ``pillow`` imports as ``PIL``
    and ``pyyaml`` as ``yaml``, and the environment itself knows which modules each one
    provides (:data:`_HEALTH_CODE`).
    """
    found: dict[str, bool] = {}
    for line in lines:
        name = requirement_name(line).lower().replace("_", "-")
        if name:
            found[name] = found.get(name, True) and ";" in line
    return list(found.items())


def torch_requirement(lines: Sequence[str]) -> str | None:
    """The torch pin (``torch==2.13.0``), installed first and on its own (index choice)."""
    for line in lines:
        if requirement_name(line).lower() == "torch":
            return line.split(";", 1)[0].strip()
    return None


def requirements_digest(lines: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


# -- torch build -----------------------------------------------------------------------------------


def nvidia_gpu_visible() -> bool:
    """True when ``nvidia-smi -L`` lists a GPU (the driver is installed and sees one)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        proc = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, **_hidden_window())
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0 and "GPU" in proc.stdout


def choose_torch_build(requested: str, gpu_visible: Callable[[], bool] = nvidia_gpu_visible) -> str:
    """``auto`` -> ``cuda`` where an NVIDIA GPU is visible, else ``cpu``."""
    if requested not in TORCH_BUILDS:
        raise EnvError(f"unknown torch build '{requested}'; use one of {', '.join(TORCH_BUILDS)}")
    if requested != "auto":
        return requested
    return "cuda" if gpu_visible() else "cpu"


def default_torch_index(build: str, platform: str = sys.platform) -> str:
    """The index for torch's CPU build: PyTorch's CPU index on Linux and Windows; on macOS
    the package index's torch is already CPU/MPS. CUDA: the package index (Linux)."""
    if build == "cpu" and platform != "darwin":
        return TORCH_CPU_INDEX_URL
    return ""


def index_reachable(url: str, timeout: float = INDEX_PROBE_TIMEOUT_S) -> bool:
    """One short request, so an unreachable index costs seconds, not pip's minutes of retries."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=timeout) as response:
            return 200 <= response.status < 400
    except (OSError, ValueError, urllib.error.URLError):
        return False


def pip_source_args(wheelhouse: Path | None) -> list[str]:
    """Offline/air-gapped: only the wheelhouse, never the network."""
    if wheelhouse is None:
        return []
    return ["--no-index", "--find-links", str(wheelhouse)]


def is_local_folder(index_url: str) -> bool:
    """A folder of wheels given as the torch index: where PyTorch's CPU index is blocked, its
    wheel can be fetched elsewhere (``pip download --no-deps``) and handed over as a folder."""
    return bool(index_url) and "://" not in index_url and Path(index_url).expanduser().is_dir()


def torch_install_args(build: str, index_url: str, wheelhouse: Path | None) -> list[str]:
    """pip options for torch. The CPU index (or a folder holding its wheel) is an *extra*
    source: pip then takes the highest version, and ``2.13.0+cpu`` sorts above the package
    index's ``2.13.0``, while torch's own dependencies still come from the package index."""
    if wheelhouse is not None:
        return pip_source_args(wheelhouse)
    if is_local_folder(index_url):
        return ["--find-links", str(Path(index_url).expanduser())]
    return ["--extra-index-url", index_url] if index_url else []


# -- running programs ------------------------------------------------------------------------------


def _hidden_window() -> dict[str, Any]:
    if sys.platform == "win32":
        return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)}
    return {}


def _stop(proc: subprocess.Popen[str]) -> None:
    """Terminate, then kill after a grace period; Windows has no process groups to signal."""
    if proc.poll() is not None:
        return
    try:
        if sys.platform == "win32":
            proc.terminate()
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        if sys.platform == "win32":
            proc.kill()
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Hooks:
    """Where setup reports to: the Processing feedback in QGIS, the terminal from a shell."""

    info: Callable[[str], None] = print
    warning: Callable[[str], None] = lambda text: print(f"warning: {text}", file=sys.stderr)
    progress: Callable[[float], None] = lambda value: None
    canceled: Callable[[], bool] = lambda: False
    lines: list[str] = field(default_factory=list)


def run_streaming(
    cmd: Sequence[str], hooks: Hooks, env: dict[str, str] | None = None
) -> tuple[int, list[str]]:
    """Run ``cmd``, relaying each output line to the log as it comes (pip's progress), and
    stop it when the user cancels. Returns the exit code and the last lines."""
    try:
        proc = start_process(  # its own process group: cancel reaches pip's children too
            list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    except OSError as exc:
        raise EnvError(
            f"cannot run {cmd[0]} ({exc.strerror}); check that it is a Python interpreter"
        ) from None
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        with proc.stdout:  # closed here, by its only reader (no ResourceWarning in QGIS's log)
            for line in proc.stdout:
                lines.put(line.rstrip())
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    tail: list[str] = []
    try:
        while True:
            if hooks.canceled():
                raise SetupCancelledError("setup cancelled by the user")
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.strip():
                hooks.info(line)
                tail = [*tail[-19:], line]
    except BaseException:  # cancel, Ctrl-C: pip runs in its own process group, stop it too
        _stop(proc)
        raise
    return proc.wait(), tail


def _child_env() -> dict[str, str]:
    """No QGIS Python/GDAL/PROJ settings in the child; pip's own settings (index, proxy) kept."""
    env = clean_environment(Path(__file__).resolve().parent.parent)
    env.pop("PYTHONPATH", None)
    return env


def pip_failure(tail: Sequence[str], what: str, wheelhouse: Path | None) -> EnvError:
    """pip's last error line, made into one line that says what to do."""
    errors = [line.strip() for line in tail if line.strip().startswith("ERROR:")]
    reason = (errors[-1] if errors else (tail[-1].strip() if tail else "no output"))[:300]
    if wheelhouse is not None and ("No matching distribution" in reason or "Could not find" in reason):
        todo = f"add the missing wheel to the wheelhouse {wheelhouse} (pip download -r requirements.txt)"
    else:
        todo = "check the network or proxy (pip's settings apply), or use a WHEELHOUSE folder"
    return EnvError(f"pip could not install {what} ({reason}); {todo}")


def pip_install(python: Path, args: Sequence[str], what: str, wheelhouse: Path | None, hooks: Hooks) -> None:
    """``python -m pip install ARGS`` with its output in the log; :func:`pip_failure` if it fails."""
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    code, tail = run_streaming(cmd, hooks, env=_child_env())
    if code != 0:
        raise pip_failure(tail, what, wheelhouse)


# -- prerequisites ---------------------------------------------------------------------------------

_PROBE = (
    "import importlib.util as u, json, sys\n"
    "def has(m):\n"
    "    try:\n"
    "        __import__(m)\n"
    "        return True\n"
    "    except Exception:\n"
    "        return False\n"
    "print(json.dumps({'version': list(sys.version_info[:3]), 'venv': has('venv'),"
    " 'ensurepip': has('ensurepip'), 'pip': u.find_spec('pip') is not None}))\n"
)


def inspect_python(python: Path) -> dict[str, Any]:
    """Version and the modules setup needs, from the interpreter itself."""
    todo = "give PYTHON a working Python 3 interpreter"
    try:
        proc = run_code(python, _PROBE, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EnvError(f"cannot run the Python {python} ({exc}); {todo}") from None
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise EnvError(f"{python} is not a working Python 3 interpreter ({detail}); {todo}") from None


def missing_prerequisite(info: dict[str, Any], python: Path, platform: str = sys.platform) -> str | None:
    """The one thing to install before setup can work, or None."""
    version = tuple(info.get("version", (0, 0)))[:2]
    if version < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return (
            f"{python} is Python {'.'.join(map(str, version))}; the backend needs Python {need} or newer: "
            "give PYTHON a newer interpreter"
        )
    if not info.get("venv"):
        what = (
            "Debian/Ubuntu: sudo apt install python3-venv"
            if platform.startswith("linux")
            else "reinstall Python with its standard library"
        )
        return f"{python} has no 'venv' module ({what}), or give PYTHON another Python"
    return None


def no_pip_message(python: Path, reason: str, platform: str = sys.platform) -> str:
    version = ""
    if platform.startswith("linux"):
        version = " (Debian/Ubuntu: sudo apt install python3-venv)"
    return (
        f"pip is missing from QGIS's Python {python}: it has no ensurepip{version}, and {PIP_WHEEL} "
        f"could not be fetched ({reason}); install that package, or put {PIP_WHEEL} in the WHEELHOUSE folder"
    )


def fetch_pip_wheel(wheelhouse: Path | None, dest: Path, hooks: Hooks) -> Path:
    """The pinned pip wheel: from the wheelhouse, else downloaded and checked against its hash."""
    if wheelhouse is not None:
        candidates = sorted(wheelhouse.glob("pip-*-py3-none-any.whl"))
        if not candidates:
            raise EnvError(f"no pip wheel in {wheelhouse}")
        return candidates[-1]
    page = urllib.request.urlopen(PIP_SIMPLE_INDEX, timeout=30).read().decode("utf-8", "replace")
    marker = PIP_WHEEL
    at = page.find(marker)
    if at < 0:
        raise EnvError(f"{PIP_WHEEL} is not listed on {PIP_SIMPLE_INDEX}")
    start = page.rfind('href="', 0, at) + len('href="')
    href = page[start : page.find('"', at)].split("#", 1)[0]
    url = urllib.parse.urljoin(PIP_SIMPLE_INDEX, href)
    hooks.info(f"downloading {url}")
    data = urllib.request.urlopen(url, timeout=120).read()
    if hashlib.sha256(data).hexdigest() != PIP_WHEEL_SHA256:
        raise EnvError(f"{url} does not have the expected SHA-256")
    path = dest / PIP_WHEEL
    path.write_bytes(data)
    return path


# -- setup -----------------------------------------------------------------------------------------


@dataclass
class SetupResult:
    python: Path
    env_dir: Path
    reused: bool
    seconds: float
    size_bytes: int
    torch_build: str


# Run inside the environment: import the top-level module of each required distribution,
# found through its installed metadata (pillow -> PIL); a missing unconditional one is an
# error, a missing conditional one (marker not matching this Python or system) is not.
_HEALTH_CODE = (
    "import importlib, importlib.metadata as md, json, re, sys\n"
    "norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()\n"
    "tops = {}\n"
    "for mod, dists in md.packages_distributions().items():\n"
    "    for d in dists:\n"
    "        tops.setdefault(norm(d), set()).add(mod)\n"
    "for dist, conditional in json.loads(sys.argv[1]):\n"
    "    mods = sorted(m for m in tops.get(norm(dist), ()) if not m.startswith('_'))\n"
    "    if not mods:\n"
    "        if conditional:\n"
    "            continue\n"
    "        sys.exit(f'the package {dist!r} is not installed')\n"
    "    name = norm(dist).replace('-', '_')\n"
    "    importlib.import_module(name if name in mods else mods[0])\n"
)


def health_problem(
    python: Path, distributions: Sequence[tuple[str, bool]], timeout: float = 300
) -> str | None:
    """None when every required distribution is installed and imports in the environment,
    else the last error line (``ModuleNotFoundError: ...``, ``the package 'x' is not installed``)."""
    try:
        if distributions:
            proc = run_code(
                python, _HEALTH_CODE, json.dumps([list(d) for d in distributions]), timeout=timeout
            )
        else:
            proc = run_code(python, "pass", timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if proc.returncode == 0:
        return None
    return (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1][:300]


class _Relay:
    """A worker's messages to the setup's hooks, in QgsProcessingFeedback's shape."""

    def __init__(self, hooks: Hooks, prefix: str) -> None:
        self._hooks, self._prefix = hooks, prefix

    def isCanceled(self) -> bool:  # noqa: N802 - QgsProcessingFeedback naming
        return self._hooks.canceled()

    def setProgress(self, value: float) -> None:  # noqa: N802
        pass

    def setProgressText(self, text: str) -> None:  # noqa: N802
        pass

    def pushInfo(self, text: str) -> None:  # noqa: N802
        self._hooks.info(f"{self._prefix}: {text}")

    def pushDebugInfo(self, text: str) -> None:  # noqa: N802
        pass

    def pushWarning(self, text: str) -> None:  # noqa: N802
        self._hooks.warning(f"{self._prefix}: {text}")


def prepare_models(python: Path, root: Path, hooks: Hooks) -> None:
    """The bundled models made ready for this CPU through the worker (its ``prepare``
    request): each one's fast path checked and its graphs exported once, so that the first
    raster does not wait for them. Seconds on a prepared environment."""
    try:
        run_request({"type": "prepare"}, _Relay(hooks, "prepare"), python=python, root=root)
    except WorkerError as exc:
        if hooks.canceled():
            raise SetupCancelledError("setup cancelled by the user") from None
        raise EnvError(f"preparing the bundled models failed: {exc}") from None


def self_test(python: Path, root: Path, hooks: Hooks) -> None:
    """One small raster through the real worker with the bundled model, as the algorithms
    run it: proves torch, rasterio and the backend work together in this environment."""
    with tempfile.TemporaryDirectory(prefix="slimdiffsr-selftest-") as tmp:
        src, out = Path(tmp) / "tile.tif", Path(tmp) / "tile_sr.tif"
        make = (
            "import sys, numpy as np, rasterio\n"
            "from rasterio.transform import from_origin\n"
            "y, x = np.mgrid[0:48, 0:48]\n"
            "data = np.stack([(x * 5 + y * k) % 256 for k in (1, 2, 3)]).astype('uint8')\n"
            "with rasterio.open(sys.argv[1], 'w', driver='GTiff', width=48, height=48, count=3,"
            " dtype='uint8', crs='EPSG:32633', transform=from_origin(500000, 5000000, 10, 10)) as d:\n"
            "    d.write(data)\n"
        )
        proc = run_code(python, make, str(src))
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
            raise EnvError(f"the self-test could not write a raster with rasterio ({last}); run setup again")

        request = {"type": "upscale", "input": str(src), "output": str(out), "options": {"overviews": False}}
        try:
            report = run_request(request, _Relay(hooks, "self-test"), python=python, root=root)
        except WorkerError as exc:
            if hooks.canceled():
                raise SetupCancelledError("setup cancelled by the user") from None
            raise EnvError(f"the self-test failed: {exc}") from None
        if report.get("output_size") != [192, 192] or not out.is_file():
            raise EnvError(
                f"the self-test wrote an unexpected result ({report.get('output_size')}); run the setup again"
            )


def setup_environment(
    env_dir: Path,
    requirements: Sequence[Path],
    *,
    base_python: Path | None = None,
    torch_build: str = "auto",
    torch_index_url: str | None = None,
    wheelhouse: Path | None = None,
    root: Path | None = None,
    run_self_test: bool = True,
    force: bool = False,
    hooks: Hooks | None = None,
) -> SetupResult:
    """Make ``env_dir`` a healthy backend environment, doing only what is missing.

    A healthy environment with the same requirements and torch build is kept (seconds).
    One whose packages do not import is rebuilt from scratch. Cancel stops pip; a folder
    this call created is removed, and in every case the marker is absent until the end.
    """
    hooks = hooks or Hooks()
    started = time.monotonic()
    env_dir = Path(env_dir).absolute()
    root = Path(root or Path(__file__).resolve().parent.parent)
    lines = requirement_lines(requirements)
    modules = required_distributions(lines)
    build = choose_torch_build(torch_build)
    digest = requirements_digest(lines)
    python = env_python(env_dir)
    if wheelhouse is not None and not Path(wheelhouse).is_dir():
        raise EnvError(f"the wheelhouse folder {wheelhouse} does not exist; give a folder of wheels")

    marker = read_marker(env_dir)
    if (
        marker
        and not force
        and python.is_file()
        and marker.get("requirements") == digest
        and marker.get("torch_build") == build
    ):
        problem = health_problem(python, modules)
        if problem is None:
            size = folder_size(env_dir)
            hooks.info(
                f"the backend environment {env_dir} is already set up and healthy "
                f"({size / 2**30:.2f} GB, torch {marker.get('torch', '?')}); nothing to do"
            )
            return SetupResult(python, env_dir, True, time.monotonic() - started, size, build)
        hooks.warning(f"the backend environment {env_dir} is broken ({problem}); rebuilding it")
        force = True  # pip would call its damaged packages installed: start from scratch

    base = Path(base_python) if base_python else find_base_python()
    if base is None or not base.is_file():
        raise EnvError(
            f"QGIS's Python interpreter was not found ({base or 'no candidate'}); give PYTHON the path of a "
            "Python 3.10+ interpreter"
        )
    info = inspect_python(base)
    problem = missing_prerequisite(info, base)
    if problem:
        raise EnvError(problem)

    (env_dir / MARKER).unlink(missing_ok=True)
    created = False
    try:
        reuse = python.is_file() and not force and health_problem(python, ()) is None
        if reuse and info["version"][:2] != _env_version(python):
            reuse = False
        if not reuse:
            if env_dir.exists():
                hooks.info(f"removing the previous environment {env_dir}")
                shutil.rmtree(env_dir, ignore_errors=True)
            created = True
            _create_venv(base, env_dir, info, wheelhouse, hooks)
        hooks.progress(10)
        torch_line = torch_requirement(lines)
        if torch_line:
            _install_torch(python, torch_line, build, torch_index_url, wheelhouse, hooks)
        hooks.progress(60)
        hooks.info("installing the backend requirements")
        args = [*pip_source_args(wheelhouse)]
        for req in requirements:
            args += ["-r", str(req)]
        pip_install(python, args, "the backend requirements", wheelhouse, hooks)
        hooks.progress(85)
        problem = health_problem(python, modules)
        if problem and not created:
            hooks.warning(
                f"the existing environment {env_dir} cannot import its packages ({problem}); "
                "rebuilding it from scratch"
            )
            shutil.rmtree(env_dir, ignore_errors=True)
            return setup_environment(
                env_dir,
                requirements,
                base_python=base,
                torch_build=build,
                torch_index_url=torch_index_url,
                wheelhouse=wheelhouse,
                root=root,
                run_self_test=run_self_test,
                force=True,
                hooks=hooks,
            )
        if problem:
            raise EnvError(
                f"the new environment cannot import its packages ({problem}); run the setup again "
                "with another PYTHON or TORCH_BUILD"
            )
        if run_self_test:
            hooks.info("self-test: one small raster through the worker")
            self_test(python, root, hooks)
            hooks.info("preparing the bundled models for this computer")
            prepare_models(python, root, hooks)
        torch_version = _torch_version(python) if torch_line else None
        if build == "cuda" and torch_line and not _cuda_usable(python):
            hooks.warning("torch cannot use the GPU (no driver, or a CPU-only build); the CPU will be used")
        (env_dir / MARKER).write_text(
            json.dumps(
                {
                    "requirements": digest,
                    "torch_build": build,
                    "torch": torch_version,
                    "python": ".".join(map(str, info["version"])),
                    "base_python": str(base),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    except BaseException:
        if created:
            shutil.rmtree(env_dir, ignore_errors=True)
        raise
    hooks.progress(100)
    size = folder_size(env_dir)
    seconds = time.monotonic() - started
    hooks.info(
        f"backend environment ready: {python} ({size / 2**30:.2f} GB, torch {torch_version or '-'}, "
        f"{seconds:.0f} s)"
    )
    return SetupResult(python, env_dir, False, seconds, size, build)


def run_code(python: Path, code: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in a clean environment, no console window on Windows."""
    return subprocess.run(
        [str(python), "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_child_env(),
        **_hidden_window(),
    )


def _env_version(python: Path) -> list[int] | None:
    try:
        proc = run_code(python, "import sys; print(sys.version_info[0], sys.version_info[1])", timeout=60)
        return [int(v) for v in proc.stdout.split()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _torch_version(python: Path) -> str | None:
    """``2.13.0+cpu (CPU-only build)`` or ``2.13.0 (CUDA 13.0 build)``: the version alone does
    not tell the package index's CUDA build (several GB) from the CPU one."""
    code = (
        "import torch; c = torch.version.cuda; "
        "print(torch.__version__, f'(CUDA {c} build)' if c else '(CPU-only build)')"
    )
    return run_code(python, code).stdout.strip() or None


def _cuda_usable(python: Path) -> bool:
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return run_code(python, code).returncode == 0


def _create_venv(
    base: Path, env_dir: Path, info: dict[str, Any], wheelhouse: Path | None, hooks: Hooks
) -> None:
    """``python -m venv``; without ensurepip (Debian's python3 without python3-venv) the venv
    is made without pip, and pip is installed into it from its pinned wheel (no root)."""
    hooks.info(
        f"creating the backend environment {env_dir} with {base} "
        f"(Python {'.'.join(map(str, info['version']))})"
    )
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    with_pip = bool(info.get("ensurepip"))
    cmd = [str(base), "-m", "venv", *([] if with_pip else ["--without-pip"]), str(env_dir)]
    code, tail = run_streaming(cmd, hooks, env=_child_env())
    if code != 0:
        reason = (tail[-1] if tail else f"exit code {code}")[:300]
        if "ensurepip" in reason:
            raise EnvError(no_pip_message(base, reason))
        raise EnvError(
            f"{base} could not create a virtual environment in {env_dir} ({reason}); check free "
            "disk space and write permission, or give PYTHON another Python"
        )
    if with_pip:
        return
    hooks.info(f"{base} has no ensurepip: installing {PIP_WHEEL} into the environment")
    with tempfile.TemporaryDirectory(prefix="slimdiffsr-pip-") as tmp:
        try:
            wheel = fetch_pip_wheel(Path(wheelhouse) if wheelhouse else None, Path(tmp), hooks)
        except (OSError, EnvError, urllib.error.URLError) as exc:
            raise EnvError(no_pip_message(base, str(exc)[:200])) from None
        python = env_python(env_dir)
        # A pip wheel runs from the zip: it installs itself without a pip to start from.
        cmd = [str(python), str(wheel / "pip"), "install", "--no-index", "--no-cache-dir", str(wheel)]
        code, tail = run_streaming(cmd, hooks, env=_child_env())
        if code != 0:
            raise EnvError(no_pip_message(base, (tail[-1] if tail else f"exit code {code}")[:200]))


def _install_torch(
    python: Path, torch_line: str, build: str, index_url: str | None, wheelhouse: Path | None, hooks: Hooks
) -> None:
    wanted = torch_line.split("==")[-1]
    check = (
        "import sys, torch; v = torch.__version__; cuda = torch.version.cuda is not None\n"
        f"sys.exit(0 if v.split('+')[0] == {wanted!r} and (cuda or {build!r} == 'cpu') else 1)"
    )
    if "==" in torch_line and health_problem(python, ()) is None:
        if run_code(python, check).returncode == 0:
            hooks.info(f"{torch_line} ({build}) is already installed")
            return
    url = default_torch_index(build) if index_url is None else index_url.strip()
    label = f"{build} build"
    if url and wheelhouse is None and not is_local_folder(url) and not index_reachable(url):
        hooks.warning(
            f"the torch index {url} is not reachable; installing torch from pip's configured index "
            "instead (on Linux that is the CUDA build, about 5 GB installed); to avoid that, set "
            "TORCH_INDEX_URL to a reachable mirror of it or to a folder holding its torch wheel"
        )
        url = ""
        label = "the package index's build"  # on Linux the CUDA one, whatever was asked
    where = f" from {url}" if url else (f" from {wheelhouse}" if wheelhouse else "")
    hooks.info(f"installing {torch_line} ({label}){where}")
    pip_install(
        python, [*torch_install_args(build, url, wheelhouse), torch_line], torch_line, wheelhouse, hooks
    )


# -- command line (make install) -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m plugin.backend_env --env .venv``: what ``make install`` runs."""
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(prog="python -m plugin.backend_env", description=main.__doc__)
    parser.add_argument("--env", type=Path, required=True, help="the environment folder to create or check")
    parser.add_argument("--python", type=Path, default=None, help="the Python to create it with")
    parser.add_argument("--torch-build", choices=TORCH_BUILDS, default="auto")
    parser.add_argument("--torch-index-url", default=None, help="empty: pip's configured index")
    parser.add_argument("--wheelhouse", type=Path, default=None, help="install offline from this folder")
    parser.add_argument(
        "--requirements",
        type=Path,
        action="append",
        default=None,
        help="requirement files (default: the plugin's requirements.txt)",
    )
    parser.add_argument("--no-self-test", action="store_true")
    parser.add_argument("--force", action="store_true", help="rebuild even when healthy")
    args = parser.parse_args(argv)
    hooks = Hooks(info=lambda text: print(text, flush=True))
    try:
        setup_environment(
            args.env,
            args.requirements or [root / "requirements.txt"],
            base_python=args.python,
            torch_build=args.torch_build,
            torch_index_url=args.torch_index_url,
            wheelhouse=args.wheelhouse,
            root=root,
            run_self_test=not args.no_self_test,
            force=args.force,
            hooks=hooks,
        )
    except EnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 130 if isinstance(exc, SetupCancelledError) else 1
    except KeyboardInterrupt:
        print("error: setup interrupted; run it again to finish", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
