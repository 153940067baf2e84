"""Process-wide settings a command sets for a run and restores after it: signal handlers, the
garbage collector, `datasets`' progress bars and error log lines. Only the CLI uses this module, and
a Ray worker for the process Ray starts for it (the collector's settings): the library never changes
the state of the process it runs in.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Iterator
from typing import Any

import datasets
from tqdm import tqdm

from hfdistill.core.types import StopRequest

__all__ = ["run_settings", "throughput_gc"]


@contextlib.contextmanager
def run_settings(stop: StopRequest) -> Iterator[None]:
    """For the length of a run: Ctrl-C/SIGTERM request a graceful stop, GC tuned, datasets' bars off and
    its errors reported once (by us)."""
    with _signals(stop), throughput_gc(), _quiet_datasets(), _errors_reported_once():
        yield


@contextlib.contextmanager
def _signals(stop: StopRequest) -> Iterator[None]:
    """First SIGINT/SIGTERM: start nothing new, let in-flight rollouts finish. Second: stop now."""
    def handler(signum: int, _frame: Any) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
        # Through tqdm, so a live progress bar is cleared and redrawn below the message, not left stale.
        tqdm.write(f"[hfdistill] {signal.Signals(signum).name}: finishing the rollouts in flight (they are "
                   "recorded); press Ctrl-C again to stop at once", file=sys.stderr)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def throughput_gc() -> Iterator[None]:
    """Objects from imports and set-up live all run, so the collector need not rescan them, and a
    rollout makes many short-lived objects that reference counting frees on its own (≈7 % CPU)."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Our progress display replaces datasets' tqdm bars, which would fight it on stderr."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def _errors_reported_once() -> Iterator[None]:
    """`datasets` logs an ERROR line of its own (an Arrow message) before raising the exception we
    translate into one `error:` line; drop those records while a command runs, keep its warnings."""
    def below_error(record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR

    # Its records come from child loggers (datasets.packaged_modules...): filter at its handlers,
    # which importing `datasets` (above) installed.
    handlers = list(logging.getLogger("datasets").handlers)
    for handler in handlers:
        handler.addFilter(below_error)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(below_error)
