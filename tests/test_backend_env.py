"""Creating and finding the backend environment (plugin/backend_env.py) without QGIS.

The Windows and macOS branches cannot run here: their path logic is checked with pure
paths. The pip tests use real pip and real venvs on tiny requirements from a wheelhouse
(offline: ``--no-index``), so they run in seconds; the full environment with torch is
created once, through QGIS, in ``test_install_from_zip.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest

from plugin import backend_env
from plugin.backend_env import (
    MARKER,
    PIP_WHEEL,
    EnvError,
    Hooks,
    SetupCancelledError,
    SetupResult,
    base_python_candidates,
    choose_torch_build,
    default_torch_index,
    env_python,
    missing_prerequisite,
    no_pip_message,
    profile_env_dir,
    required_distributions,
    requirement_lines,
    setup_environment,
    torch_install_args,
    torch_requirement,
)
from plugin.worker_client import WorkerError, locate_python

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")
SMALL = ("affine==2.4.0", "tqdm==4.67.1")

# -- paths on every platform -------------------------------------------------------------------


def test_env_python_per_platform() -> None:
    win = PureWindowsPath(r"C:\Users\ana\AppData\Roaming\QGIS\QGIS3\profiles\default\slimdiffsr\env")
    assert str(env_python(win, "win32")).endswith(r"slimdiffsr\env\Scripts\python.exe")
    assert env_python(PurePosixPath("/p/env"), "darwin") == PurePosixPath("/p/env/bin/python")
    assert env_python(PurePosixPath("/p/env"), "linux") == PurePosixPath("/p/env/bin/python")
    assert profile_env_dir(Path("/home/a/.local/share/QGIS/QGIS3/profiles/default")) == Path(
        "/home/a/.local/share/QGIS/QGIS3/profiles/default/slimdiffsr/env"
    )


def test_qgis_python_candidates_on_windows_macos_and_linux() -> None:
    # OSGeo4W / the standalone installer: the embedded Python's home holds python.exe.
    osgeo4w = r"C:\OSGeo4W"
    win = base_python_candidates("win32", osgeo4w + r"\apps\Python312", osgeo4w + r"\bin\qgis.exe", (3, 12))
    assert win[0] == PureWindowsPath(r"C:\OSGeo4W\apps\Python312\python.exe")
    assert all(isinstance(p, PureWindowsPath) for p in win)
    assert not any("qgis.exe" in str(p) for p in win)
    # QGIS.app: Contents/MacOS/bin/python3.X
    app = "/Applications/QGIS.app/Contents/MacOS"
    mac = base_python_candidates("darwin", app, app + "/QGIS", (3, 9))
    assert mac[0] == PurePosixPath("/Applications/QGIS.app/Contents/MacOS/bin/python3.9")
    # Linux packages: /usr/bin/python3.X before whatever PATH's python3 is (pyenv, conda).
    linux = base_python_candidates(sys.platform, "/usr", "/opt/pyenv/shims/python3", (3, 11))
    assert linux[0] == Path("/usr/bin/python3.11")
    assert linux.index(Path("/opt/pyenv/shims/python3")) > linux.index(Path("/usr/bin/python3"))


def test_torch_from_a_folder_of_wheels_keeps_the_package_index_for_the_rest(tmp_path) -> None:
    # Where PyTorch's CPU index is blocked, its wheel fetched elsewhere is given as a folder.
    assert torch_install_args("cpu", str(tmp_path), None) == ["--find-links", str(tmp_path)]
    absent = str(tmp_path / "absent")  # not a folder here: taken as an index URL
    assert torch_install_args("cpu", absent, None) == ["--extra-index-url", absent]


def test_torch_build_and_index_choice() -> None:
    assert choose_torch_build("auto", lambda: True) == "cuda"
    assert choose_torch_build("auto", lambda: False) == "cpu"
    assert choose_torch_build("cpu", lambda: True) == "cpu"
    with pytest.raises(EnvError, match="unknown torch build 'rocm'"):
        choose_torch_build("rocm")
    assert default_torch_index("cpu", "linux") == "https://download.pytorch.org/whl/cpu"
    assert default_torch_index("cpu", "win32") == "https://download.pytorch.org/whl/cpu"
    assert default_torch_index("cpu", "darwin") == ""  # the package index's macOS torch is CPU/MPS
    assert default_torch_index("cuda", "linux") == ""
    assert torch_install_args("cpu", "https://idx/cpu", None) == ["--extra-index-url", "https://idx/cpu"]
    assert torch_install_args("cpu", "https://idx/cpu", Path("/wh")) == ["--no-index", "--find-links", "/wh"]


def test_requirements_are_pinned_per_python_version() -> None:
    lines = requirement_lines([ROOT / "requirements.txt"])
    assert torch_requirement(lines) == "torch==2.13.0"
    dists = dict(required_distributions(lines))
    assert {"torch", "numpy", "rasterio", "scipy", "safetensors", "pillow"} <= set(dists)
    assert dists["numpy"] is True and dists["torch"] is False  # numpy: one pin per Python version
    assert all("==" in line for line in lines), "every backend requirement is pinned"
    marker_env = pytest.importorskip("pip._vendor.packaging.markers")
    numpy = [line for line in lines if line.startswith("numpy")]

    def pick(version: str) -> list[str]:
        env = {"python_version": version, "python_full_version": version + ".0"}
        return [
            line.split(";")[0].strip()
            for line in numpy
            if ";" not in line or marker_env.Marker(line.split(";", 1)[1]).evaluate(env)
        ]

    assert pick("3.11") == ["numpy==1.26.4"]  # Debian 12, QGIS 3.22
    assert pick("3.12") == ["numpy==1.26.4"]  # OSGeo4W, QGIS 3.34/3.40
    assert len(pick("3.13")) == 1 and pick("3.13")[0].startswith("numpy==2.")  # Debian 13, QGIS 3.40


def test_health_check_uses_distribution_names_not_module_guesses() -> None:
    # pillow imports as PIL: a check that imported 'pillow' failed every fresh environment.
    python = Path(sys.executable)
    assert backend_env.health_problem(python, [("pillow", False), ("numpy", True)]) is None
    missing = backend_env.health_problem(python, [("no-such-dist", False)])
    assert missing == "the package 'no-such-dist' is not installed"
    assert backend_env.health_problem(python, [("no-such-dist", True)]) is None  # marker skipped it


def test_prerequisite_messages_say_what_to_install() -> None:
    old = missing_prerequisite({"version": [3, 8, 10], "venv": True}, Path("/usr/bin/python3"), "linux")
    assert old and "Python 3.10 or newer" in old
    no_venv = missing_prerequisite({"version": [3, 13, 5], "venv": False}, Path("/usr/bin/python3"), "linux")
    assert no_venv and "sudo apt install python3-venv" in no_venv
    assert missing_prerequisite({"version": [3, 12, 4], "venv": True}, Path("python.exe"), "win32") is None
    message = no_pip_message(Path("/usr/bin/python3"), "network unreachable", "linux")
    assert message.startswith("pip is missing from QGIS's Python /usr/bin/python3")
    assert "python3-venv" in message and PIP_WHEEL in message and "\n" not in message


# -- finding the environment ---------------------------------------------------------------------


def test_locate_names_the_setup_algorithm_and_spots_an_unfinished_setup(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SLIMDIFFSR_PYTHON", raising=False)
    plugin_root = tmp_path / "plugin"  # an installed zip: no .venv
    plugin_root.mkdir()
    env = tmp_path / "profile" / "slimdiffsr" / "env"
    with pytest.raises(WorkerError) as missing:
        locate_python("", plugin_root, env)
    assert "backend environment was not found" in str(missing.value)
    assert "'Set up SlimDiffSR backend' (slimdiffsr:setup)" in str(missing.value)
    assert "make install" not in str(missing.value)

    python = env_python(env)
    python.parent.mkdir(parents=True)
    python.symlink_to(SYSTEM_PYTHON if SYSTEM_PYTHON.exists() else Path(sys.executable))
    with pytest.raises(WorkerError, match="is incomplete .*setup did not finish.*slimdiffsr:setup"):
        locate_python("", plugin_root, env)

    (env / MARKER).write_text("{}")
    assert locate_python("", plugin_root, env) == (python, "the environment made by the setup algorithm")
    monkeypatch.setenv("SLIMDIFFSR_PYTHON", sys.executable)  # the variable still wins
    assert locate_python("", plugin_root, env)[0] == Path(sys.executable)


# -- real venv and pip, offline ------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """pip and two small pinned packages as wheels: what an air-gapped site copies over."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "-d",
            str(folder),
            "pip==26.3",
            *SMALL,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot download the test wheels: {proc.stderr.strip().splitlines()[-1:]}")
    return folder


@pytest.fixture()
def no_ensurepip_python(tmp_path) -> Path:
    """Debian's python3 as on a machine without python3-venv: ``import ensurepip`` fails."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip("needs /usr/bin/python3")
    shadow = tmp_path / "shadow"
    (shadow / "ensurepip").mkdir(parents=True)
    (shadow / "ensurepip" / "__init__.py").write_text("raise ImportError('ensurepip is not available')\n")
    wrapper = tmp_path / "python3"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={shadow} exec {SYSTEM_PYTHON} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _requirements(tmp_path: Path) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text("\n".join(SMALL) + "\n")
    return path


def _offline(monkeypatch) -> None:
    """No configured index or extra wheel folder may help: the wheelhouse alone."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)


def test_offline_setup_without_ensurepip_then_idempotent_then_repairs_a_broken_env(
    tmp_path, wheelhouse, no_ensurepip_python, monkeypatch
) -> None:
    _offline(monkeypatch)
    env = tmp_path / "profile" / "slimdiffsr" / "env"
    log: list[str] = []

    def setup(base_python: Path | None) -> SetupResult:
        hooks = Hooks(info=log.append, warning=log.append)
        requirements = [_requirements(tmp_path)]
        return setup_environment(
            env,
            requirements,
            base_python=base_python,
            wheelhouse=wheelhouse,
            run_self_test=False,
            hooks=hooks,
        )

    result = setup(no_ensurepip_python)
    text = "\n".join(log)
    assert "has no ensurepip: installing pip-26.3" in text
    assert f"Looking in links: {wheelhouse}" in text  # pip's own lines reach the log
    assert result.python == env_python(env) and (env / MARKER).is_file() and not result.reused
    assert subprocess.run([str(result.python), "-c", "import affine, tqdm"]).returncode == 0

    started = time.monotonic()
    again = setup(None)
    assert again.reused and time.monotonic() - started < 15
    assert "already set up and healthy" in log[-1]

    site = next(env.glob("lib/python3*/site-packages"))
    (site / "affine" / "__init__.py").write_text("raise ImportError('damaged')\n")
    log.clear()
    repaired = setup(no_ensurepip_python)
    assert not repaired.reused and any("is broken (ImportError: damaged); rebuilding it" in m for m in log)
    assert subprocess.run([str(repaired.python), "-c", "import affine"]).returncode == 0


def test_wheelhouse_without_the_wheels_fails_in_one_line_and_leaves_nothing(tmp_path, monkeypatch) -> None:
    _offline(monkeypatch)
    if not SYSTEM_PYTHON.exists():
        pytest.skip("needs /usr/bin/python3")
    empty = tmp_path / "empty-wheelhouse"
    empty.mkdir()
    env = tmp_path / "env"
    with pytest.raises(EnvError) as failure:
        setup_environment(
            env,
            [_requirements(tmp_path)],
            base_python=SYSTEM_PYTHON,
            wheelhouse=empty,
            run_self_test=False,
            hooks=Hooks(info=lambda _: None, warning=lambda _: None),
        )
    message = str(failure.value)
    assert message.startswith("pip could not install the backend requirements")
    assert f"add the missing wheel to the wheelhouse {empty}" in message and "\n" not in message
    assert not env.exists()


def test_cancel_stops_pip_and_leaves_no_environment(tmp_path, wheelhouse, monkeypatch) -> None:
    _offline(monkeypatch)
    if not SYSTEM_PYTHON.exists():
        pytest.skip("needs /usr/bin/python3")
    env = tmp_path / "env"
    seen: list[str] = []

    def canceled() -> bool:  # the user presses Cancel once pip has started
        return any(line.startswith("Looking in links") for line in seen)

    with pytest.raises(SetupCancelledError):
        setup_environment(
            env,
            [_requirements(tmp_path)],
            base_python=SYSTEM_PYTHON,
            wheelhouse=wheelhouse,
            run_self_test=False,
            hooks=Hooks(info=seen.append, warning=seen.append, canceled=canceled),
        )
    assert not env.exists()
    assert not backend_env.is_set_up(env)
