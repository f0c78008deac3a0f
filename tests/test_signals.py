"""StopRequest: signals become a flag polled between units of work; handlers are restored.

Each check runs in a fresh interpreter: signals are process-wide, and native libraries
loaded by other tests in the same process (inference engines with their own thread pools)
must not decide the outcome.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_isolated(body: str) -> subprocess.CompletedProcess:
    code = "import os, signal\nfrom backend.signals import StopRequest\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_signals_set_the_flag_and_handlers_are_restored() -> None:
    proc = run_isolated(
        """
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        with StopRequest() as stop:
            assert not stop
            os.kill(os.getpid(), signal.SIGTERM)  # delivered before kill() returns to Python code
            assert stop and stop.signal == signal.SIGTERM
            os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the trainer checkpoints first
            assert stop.signal == signal.SIGINT
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
        print("ok")
        """
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_a_second_ctrl_c_stops_at_once_when_asked() -> None:
    proc = run_isolated(
        """
        try:
            with StopRequest(force_on_repeat=True) as stop:
                os.kill(os.getpid(), signal.SIGINT)
                assert stop.signal == signal.SIGINT
                os.kill(os.getpid(), signal.SIGINT)
                raise SystemExit("the second signal should have raised")
        except KeyboardInterrupt:
            print("interrupted")
        """
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "interrupted", proc.stderr[-2000:]
