"""The worker protocol and its client, without QGIS.

The client (plugin/worker_client.py) uses only the standard library, so it runs here in
the backend's venv with a stand-in for QgsProcessingFeedback. Fake workers (small
``backend/worker.py`` scripts in a temporary plugin folder) exercise cancel escalation and
crashes deterministically; the real worker answers a probe and reports errors.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from plugin.worker_client import (
    WorkerCancelledError,
    WorkerError,
    clean_environment,
    locate_python,
    run_request,
)

ROOT = Path(__file__).resolve().parent.parent


class RecordingFeedback:
    """Stand-in for QgsProcessingFeedback that records what it is told."""

    def __init__(self, cancel_after_progress: int | None = None, cancel_after_s: float | None = None) -> None:
        self.lines: list[tuple[str, str]] = []
        self.progress: list[float] = []
        self._cancel_after_progress = cancel_after_progress
        self._cancel_at = None if cancel_after_s is None else time.monotonic() + cancel_after_s
        self._cancelled = False

    def isCanceled(self) -> bool:  # noqa: N802 - QGIS naming
        if self._cancel_at is not None and time.monotonic() >= self._cancel_at:
            self._cancelled = True
        return self._cancelled

    def setProgress(self, value: float) -> None:  # noqa: N802
        self.progress.append(value)
        if self._cancel_after_progress is not None and len(self.progress) >= self._cancel_after_progress:
            self._cancelled = True

    def setProgressText(self, text: str) -> None:  # noqa: N802
        self.lines.append(("progress", text))

    def pushInfo(self, text: str) -> None:  # noqa: N802
        self.lines.append(("info", text))

    def pushDebugInfo(self, text: str) -> None:  # noqa: N802
        self.lines.append(("debug", text))

    def pushWarning(self, text: str) -> None:  # noqa: N802
        self.lines.append(("warning", text))

    def text(self) -> str:
        return "\n".join(t for _, t in self.lines)


def fake_plugin(tmp_path: Path, body: str) -> Path:
    """A plugin folder whose ``backend.worker`` says hello, then runs ``body`` (under this python)."""
    root = tmp_path / "fakeplugin"
    (root / "backend").mkdir(parents=True)
    (root / "backend" / "__init__.py").write_text("")
    (root / "backend" / "worker.py").write_text(HELLO + textwrap.dedent(body))
    return root


HELLO = (
    "import json, sys, time, signal, os\n"
    "def send(**m):\n    print(json.dumps(m), flush=True)\n"
    'send(type="hello")\n'
)


def test_probe_through_the_real_worker() -> None:
    feedback = RecordingFeedback()
    result = run_request({"type": "probe"}, feedback, python=Path(sys.executable), root=ROOT)
    assert result["torch"].split("+")[0] == __import__("torch").__version__.split("+")[0]
    assert result["rasterio"] and "cuda_available" in result


def test_prepare_exports_the_bundled_models_graphs_once(tmp_path, monkeypatch) -> None:
    """The setup's last step: both bundled models load as a raster would load them and
    their CPU runtime's graphs are exported (one trace per architecture: x8 shares x4's);
    a second prepare finds them and exports nothing again."""
    from backend.inference import SuperResolver
    from backend.weights import default_weights_path, load_weights

    cache = tmp_path / "cache"
    monkeypatch.setenv("SLIMDIFFSR_CACHE", str(cache))
    feedback = RecordingFeedback()
    result = run_request({"type": "prepare"}, feedback, python=Path(sys.executable), root=ROOT)
    assert set(result) == {"x4", "x8"}
    for scale in (4, 8):
        expected = SuperResolver.from_weights(load_weights(default_weights_path(scale)))
        assert result[f"x{scale}"]["device"] == expected.description
        assert result[f"x{scale}"]["graphs"] == (0 if expected.runtime == "torch" else 3)
        assert f"x{scale}: {expected.description}" in feedback.text()
    files = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.onnx")}
    if result["x4"]["graphs"]:
        assert len([n for n in files if n.startswith("template-")]) == 3  # x4 and x8: one architecture
        assert len([n for n in files if n.startswith("student-")]) == 6
    run_request({"type": "prepare"}, RecordingFeedback(), python=Path(sys.executable), root=ROOT)
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.onnx")} == files


def test_library_prints_do_not_reach_the_protocol_stream() -> None:
    """Anything printed by the backend lands on stderr; stdout carries only JSON lines."""
    # stdin stays open until the answer: end of stdin means "cancel" to the worker
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; import backend.worker as w; "
            "w.HANDLERS['probe'] = lambda r, c, t: (print('noise from a library'), {'ok': 1})[1]; "
            "sys.exit(w.main([]))",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=clean_environment(ROOT),
    )
    proc.stdin.write(json.dumps({"type": "probe"}) + "\n")
    proc.stdin.flush()
    lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    assert [m["type"] for m in lines] == ["hello", "result"]
    assert lines[-1]["result"] == {"ok": 1}
    assert proc.stdout.read() == ""
    assert "noise from a library" in proc.stderr.read()


def test_error_message_reaches_the_client(tmp_path: Path) -> None:
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    request = {"type": "assess", "input": str(tmp_path / "x.tif"), "options": {"weights": str(bad)}}
    with pytest.raises(WorkerError, match=r"broken\.safetensors is not a readable \.safetensors file"):
        run_request(request, RecordingFeedback(), python=Path(sys.executable), root=ROOT)


def test_an_unexpected_error_is_one_line_and_its_traceback_goes_apart(tmp_path: Path, monkeypatch) -> None:
    """A bug in a handler: the worker sends one line as the error and the traceback as a
    'trace' log; the client raises the line, hands the traceback to ``trace`` (QGIS's Log
    Messages panel) and pushes neither to the run's feedback."""
    import io
    import os

    from backend import worker

    def buggy(request, channel, cancel):
        return {"ratio": 1 / request["zero"]}

    monkeypatch.setitem(worker.HANDLERS, "buggy", buggy)
    stdout = io.StringIO()
    read_end, write_end = os.pipe()  # kept open: an ended stdin would mean "cancel"
    os.write(write_end, b'{"type": "buggy", "zero": 0}\n')
    with open(read_end, encoding="utf-8") as stdin:
        try:
            assert worker.serve(stdin, stdout, install_signals=False) == 1
        finally:
            os.close(write_end)
    messages = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert [m["type"] for m in messages] == ["hello", "log", "error"]
    assert messages[1]["level"] == "trace" and messages[1]["message"].startswith("Traceback")
    assert messages[2]["message"].startswith("unexpected ZeroDivisionError: division by zero (the traceback")

    root = fake_plugin(
        tmp_path,
        "sys.stdin.readline()\n" + "".join(f"send(**{m!r})\n" for m in messages[1:]) + "sys.exit(1)\n",
    )
    feedback, traces = RecordingFeedback(), []
    with pytest.raises(WorkerError) as caught:
        run_request({"type": "x"}, feedback, python=Path(sys.executable), root=root, trace=traces.append)
    assert str(caught.value) == messages[2]["message"]
    assert traces == [messages[1]["message"]]
    assert feedback.lines == []


def test_unknown_option_is_an_error_not_ignored() -> None:
    request = {"type": "assess", "input": "x.tif", "options": {"no_such_option": 1}}
    with pytest.raises(WorkerError, match="no_such_option"):
        run_request(request, RecordingFeedback(), python=Path(sys.executable), root=ROOT)


def test_progress_and_logs_are_relayed(tmp_path: Path) -> None:
    root = fake_plugin(
        tmp_path,
        """
        req = json.loads(sys.stdin.readline())
        send(type="log", level="info", message="device: cpu, bf16")
        send(type="log", level="warning", message="careful")
        send(type="progress", fraction=0.5, message="tile 1/2")
        send(type="progress", fraction=1.0)
        send(type="result", result={"echo": req["value"]})
    """,
    )
    feedback = RecordingFeedback()
    result = run_request({"type": "x", "value": 42}, feedback, python=Path(sys.executable), root=root)
    assert result == {"echo": 42}
    assert ("info", "device: cpu, bf16") in feedback.lines
    assert ("warning", "careful") in feedback.lines
    assert feedback.progress == [50.0, 100.0]


def test_cancel_message_stops_a_cooperative_worker(tmp_path: Path) -> None:
    root = fake_plugin(
        tmp_path,
        """
        import threading
        req = sys.stdin.readline()
        stop = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
        for i in range(600):
            if stop.is_set():
                send(type="cancelled", message="cancelled")
                sys.exit(130)
            send(type="progress", fraction=i / 600)
            time.sleep(0.05)
        send(type="result", result={})
    """,
    )
    started = time.monotonic()
    with pytest.raises(WorkerCancelledError, match="no output was written"):
        run_request(
            {"type": "x"}, RecordingFeedback(cancel_after_progress=2), python=Path(sys.executable), root=root
        )
    assert time.monotonic() - started < 5


def test_cancel_escalates_to_kill_when_the_worker_ignores_it(tmp_path: Path, monkeypatch) -> None:
    import plugin.worker_client as client

    monkeypatch.setattr(client, "CANCEL_GRACE_S", 0.5)
    monkeypatch.setattr(client, "KILL_GRACE_S", 0.5)
    pid_file = tmp_path / "pid"
    root = fake_plugin(
        tmp_path,
        f"""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        sys.stdin.readline()
        while True:
            send(type="progress", fraction=0.1)
            time.sleep(0.1)
    """,
    )
    started = time.monotonic()
    with pytest.raises(WorkerCancelledError):
        run_request(
            {"type": "x"}, RecordingFeedback(cancel_after_s=0.5), python=Path(sys.executable), root=root
        )
    assert time.monotonic() - started < 10
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_crash_is_reported_with_its_last_words(tmp_path: Path) -> None:
    root = fake_plugin(
        tmp_path,
        """
        sys.stdin.readline()
        sys.stderr.write("Fatal Python error: Segmentation fault\\n")
        sys.stderr.flush()
        os._exit(139)
    """,
    )
    with pytest.raises(WorkerError, match=r"stopped unexpectedly \(exit code 139: Fatal Python error: Segm"):
        run_request({"type": "x"}, RecordingFeedback(), python=Path(sys.executable), root=root)


def test_an_environment_that_cannot_start_the_worker_says_how_to_fix_it(tmp_path: Path) -> None:
    # A python that is not the backend's (it may even be Python 2 or another version):
    # it cannot run the worker module at all, so no hello ever arrives.
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'No module named backend.worker' >&2\nexit 1\n")
    fake.chmod(0o755)
    expected = r"could not start the worker \(exit code 1: No module .*slimdiffsr:setup"
    with pytest.raises(WorkerError, match=expected):
        run_request({"type": "probe"}, RecordingFeedback(), python=fake, root=tmp_path)


def test_missing_environment_names_the_setup_algorithm(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SLIMDIFFSR_PYTHON", raising=False)
    with pytest.raises(WorkerError, match=r"environment was not found .*\(slimdiffsr:setup\) once"):
        locate_python(None, tmp_path)


def test_environment_variable_beats_setting_beats_venv(tmp_path: Path, monkeypatch) -> None:
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    monkeypatch.delenv("SLIMDIFFSR_PYTHON", raising=False)
    assert locate_python(None, tmp_path)[0] == venv / "python"
    assert locate_python(sys.executable, tmp_path) == (
        Path(sys.executable),
        "the Processing setting 'Backend Python'",
    )
    monkeypatch.setenv("SLIMDIFFSR_PYTHON", "/nonexistent/python")
    with pytest.raises(WorkerError, match="SLIMDIFFSR_PYTHON environment variable does not exist"):
        locate_python(sys.executable, tmp_path)


def test_clean_environment_drops_qgis_gdal_proj_python_settings() -> None:
    env = clean_environment(
        ROOT,
        {
            "PATH": "/usr/bin",
            "PYTHONHOME": "/x",
            "PROJ_LIB": "/p",
            "GDAL_DATA": "/g",
            "LD_LIBRARY_PATH": "/l",
            "QGIS_PREFIX_PATH": "/q",
            "HOME": "/root",
        },
    )
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/root"
    assert env["PYTHONPATH"] == str(ROOT)
    assert not {"PYTHONHOME", "PROJ_LIB", "GDAL_DATA", "LD_LIBRARY_PATH", "QGIS_PREFIX_PATH"} & set(env)


def test_end_of_stdin_cancels_the_real_worker() -> None:
    """A worker whose parent disappeared stops instead of holding the GPU."""
    from backend.worker import CancelToken, _listen_for_cancel

    token = CancelToken()
    reader, writer = __import__("os").pipe()
    thread = threading.Thread(target=_listen_for_cancel, args=(open(reader), token), daemon=True)
    thread.start()
    __import__("os").close(writer)
    thread.join(timeout=5)
    assert token()


def test_a_result_that_beats_the_cancel_is_kept(tmp_path: Path) -> None:
    """Cancelling after the worker finished must not report a complete output as cancelled."""
    root = fake_plugin(
        tmp_path,
        """
        sys.stdin.readline()
        send(type="progress", fraction=1.0)
        send(type="result", result={"done": True})
        time.sleep(0.5)
    """,
    )
    feedback = RecordingFeedback(cancel_after_progress=1)
    assert run_request({"type": "x"}, feedback, python=Path(sys.executable), root=root) == {"done": True}
