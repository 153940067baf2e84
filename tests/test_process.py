"""run_settings: what a command changes in its process (signals, GC, datasets' bars and logs) is put back."""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Iterator
from typing import Any

import datasets
import pytest

from hfdistill.cli.process import run_settings
from hfdistill.core.types import StopRequest

ERROR = logging.LogRecord("datasets.builder", logging.ERROR, __file__, 1, "arrow said no", None, None)
WARNING = logging.LogRecord("datasets.builder", logging.WARNING, __file__, 1, "slow disk", None, None)


def _ours(_signum: int, _frame: Any) -> None:
    """The handlers a process had before the run (a test's own)."""


@pytest.fixture
def saved_state() -> Iterator[None]:
    """The test's own signal handlers going in; the process's handlers and datasets' bars restored after."""
    before = {s: signal.signal(s, _ours) for s in (signal.SIGINT, signal.SIGTERM)}
    bars = datasets.is_progress_bar_enabled()
    datasets.enable_progress_bars()
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)
        if not bars:
            datasets.disable_progress_bars()


def _state() -> dict[str, Any]:
    handlers = logging.getLogger("datasets").handlers
    return {"signals": (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)),
            "gc": (gc.get_threshold(), gc.get_freeze_count()), "bars": datasets.is_progress_bar_enabled(),
            "logs": [(bool(h.filter(ERROR)), bool(h.filter(WARNING))) for h in handlers]}


def test_a_run_changes_the_process_and_puts_everything_back(saved_state: None) -> None:
    before = _state()
    assert before["signals"] == (_ours, _ours) and before["bars"] and before["logs"]
    with run_settings(StopRequest()):
        during = _state()
        assert _ours not in during["signals"]
        assert during["gc"][0] == (50_000, 20, 100) and during["gc"][1] > 0  # set-up objects frozen
        assert not during["bars"]
        assert all(logs == (False, True) for logs in during["logs"])  # errors dropped, warnings kept
    assert _state() == before


def test_an_exception_inside_the_run_still_puts_everything_back(saved_state: None) -> None:
    before = _state()
    with pytest.raises(RuntimeError, match="boom"), run_settings(StopRequest()):
        raise RuntimeError("boom")
    assert _state() == before


def test_bars_that_were_off_stay_off(saved_state: None) -> None:
    datasets.disable_progress_bars()
    with run_settings(StopRequest()):
        pass
    assert not datasets.is_progress_bar_enabled()


def test_the_first_signal_requests_a_graceful_stop_and_the_second_stops_at_once(
        saved_state: None, capsys: pytest.CaptureFixture[str]) -> None:
    stop = StopRequest()
    with run_settings(stop):
        assert signal.getsignal(signal.SIGTERM) is not _ours  # else a real signal would reach `_ours`
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested
        assert "[hfdistill] SIGTERM: finishing the rollouts in flight" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert stop.requested


def test_ctrl_c_is_handled_the_same_way(saved_state: None, capsys: pytest.CaptureFixture[str]) -> None:
    stop = StopRequest()
    with run_settings(stop):
        assert signal.getsignal(signal.SIGINT) is not _ours
        signal.raise_signal(signal.SIGINT)
        assert stop.requested and "SIGINT: finishing" in capsys.readouterr().err
