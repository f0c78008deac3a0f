"""StopRequest: signals become a flag polled between units of work; handlers are restored."""

from __future__ import annotations

import os
import signal

import pytest

from backend.signals import StopRequest


def test_signals_set_the_flag_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)  # delivered before kill() returns to Python code
        assert stop and stop.signal == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the trainer checkpoints first
        assert stop.signal == signal.SIGINT
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_second_ctrl_c_stops_at_once_when_asked() -> None:
    with pytest.raises(KeyboardInterrupt), StopRequest(force_on_repeat=True) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)
        pytest.fail("the second signal should have raised")
