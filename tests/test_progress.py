"""The smoothed rate behind the ETA, and the log line (the live display is tested in a pty)."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pty
import re
import struct
import termios

import pyte
import pytest

from hfdistill.run.progress import Monitor, Rate, format_duration


def test_the_rate_starts_at_the_first_event_not_at_the_start() -> None:
    """A window of rollouts that started together finishes in a burst after a quiet warm-up: the
    mean since start (25 in 12.5 s = 2/s) would put the ETA five times too far."""
    rate = Rate(tau=30.0, min_dt=1.0)
    assert rate.update(0.0, 0) is None
    assert rate.update(10.0, 0) is None  # warming up: nothing finished yet
    assert rate.update(10.5, 5) is None  # the clock starts here
    assert rate.update(11.0, 10) is None  # readings closer than min_dt are merged
    assert rate.update(11.5, 15) == pytest.approx(10.0)
    assert rate.update(12.5, 25) == pytest.approx(10.0)


def test_the_rate_follows_a_change_smoothly() -> None:
    rate = Rate(tau=10.0, min_dt=1.0)
    rate.update(0.0, 1)
    for t in range(1, 11):
        rate.update(float(t), 1 + 10 * t)  # 10/s
    assert rate.value == pytest.approx(10.0)
    rate.update(11.0, 101 + 40)  # one second at 40/s
    assert 10.0 < rate.value < 15.0  # moves towards it without jumping


def _monitor(total: int, **kwargs) -> Monitor:
    return Monitor(total, stream=io.StringIO(), gauges=lambda: {"calls": 20, "tokens": 1000, "requests": 3},
                   **kwargs)


def test_the_log_line_and_the_final_line() -> None:
    m = _monitor(4, log_interval=3600)  # the display thread waits an hour: only finish() writes
    m.started()
    m.started()
    m.finished()
    m.failed("teacher")
    m.finished(reused=True)
    line = m.line()
    assert line.startswith("[hfdistill] 3/4 rollouts (75.0%) | elapsed 0s | ETA ? | ? rollouts/s | teacher ")
    assert "3 requests open" in line and "in flight 0" in line and "failed 1" in line and "resumed 1" in line
    stats = m.finish()
    written = m.stream.getvalue().splitlines()
    assert len(written) == 1 and written[0].startswith("[hfdistill] 3/4 rollouts (75.0%) | elapsed 0s | mean ")
    assert "ETA" not in written[0]
    assert (stats.rollouts_done, stats.rollouts_failed, stats.rollouts_reused) == (1, 1, 1)
    assert m.finish() is stats and len(m.stream.getvalue().splitlines()) == 1  # a second finish() writes nothing


@pytest.mark.parametrize("kwargs", [pytest.param({"enabled": False}, id="disabled"),
                                    pytest.param({"interval": float("inf")}, id="infinite-interval")])
def test_a_silent_monitor_writes_nothing(kwargs: dict) -> None:
    m = _monitor(1, **kwargs)
    m.started()
    m.finished()
    assert m.finish().rollouts_done == 1
    assert m.stream.getvalue() == ""


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.9, "59s"), (61, "1m01s"), (3600 * 5 + 120, "5h02m")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_a_closed_stream_stops_the_display_not_the_run() -> None:
    m = _monitor(2, log_interval=3600)
    m.stream.close()  # e.g. `hfdistill generate 2>&1 | head` after head has left
    m.started()
    m.finished()
    assert m.finish().rollouts_done == 1
    assert not m.enabled


@pytest.mark.parametrize(("columns", "finished", "expected"), [
    pytest.param(80, 4, r"^100%\|█+\| 4/4 \[00:00, done, .*0 failed\]$", id="done-80"),
    pytest.param(80, 1, r"^ 25%\|.*\| 1/4 \[00:00, stopped, .*0 failed\]$", id="interrupted-80"),
    pytest.param(40, 4, r"^100%\|█+\| 4/4 \[00:00, done, 0 failed\]$", id="done-40"),
])
def test_the_final_bar_fits_the_terminal(columns: int, finished: int, expected: str) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    with os.fdopen(slave, "w", encoding="utf-8") as terminal:
        m = Monitor(4, stream=terminal, gauges=lambda: {"calls": 9, "tokens": 900, "requests": 1},
                    interval=3600)  # only the first and the final drawing
        for _ in range(finished):
            m.started()
            m.finished()
        m.finish()
    screen = pyte.Screen(columns, 24)
    stream = pyte.ByteStream(screen)
    os.set_blocking(master, False)
    with contextlib.suppress(BlockingIOError, OSError):  # drained: no more bytes, or the slave is closed
        while data := os.read(master, 65536):
            stream.feed(data.replace(b"\n", b"\r\n"))
    os.close(master)
    bars = [line.rstrip() for line in screen.display if "%|" in line]
    assert len(bars) == 1, screen.display
    assert re.match(expected, bars[0]), bars[0]
    assert len(bars[0]) < columns


def test_a_run_with_no_event_shows_nothing() -> None:
    """Everything was already recorded: the output is written from the journal, no bar is left behind."""
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    with os.fdopen(slave, "w", encoding="utf-8") as terminal:
        m = Monitor(4, stream=terminal)
        assert m.tty and m.enabled
        m.finish()
        with pytest.raises(BlockingIOError):  # nothing was written to the terminal
            os.read(master, 1024)
    os.close(master)
