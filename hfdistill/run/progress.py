"""Run statistics, the live progress display on stderr, and the numbers of the end-of-run summary.

On a terminal the display is one tqdm bar, redrawn in place and cut to the terminal's width; to a
file or a pipe (a log, CI, `nohup`) it is a compact line every `log_interval` seconds and one at the
end. Rollouts only bump counters; a display thread reads them, so the rollout loop never waits on
the terminal and the clock keeps moving while nothing finishes.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from tqdm import tqdm

from hfdistill.core.types import ANSWERED

__all__ = ["Monitor", "Rate", "RunStats", "format_duration"]


@dataclass
class RunStats:
    """Everything counted during a run; the summary, the card and the file's metadata read it."""

    rollouts_total: int = 0
    rollouts_done: int = 0
    rollouts_reused: int = 0  # read back from the journal of an earlier attempt
    rollouts_failed: int = 0
    questions_skipped: int = 0
    stop_reasons: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    turns: Counter[int] = field(default_factory=Counter)
    searches: Counter[int] = field(default_factory=Counter)
    tool_calls: Counter[str] = field(default_factory=Counter)  # by tool name, over every row
    tool_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    teacher_calls: int = 0  # made by this run (resumed rollouts made none)
    teacher_retries: int = 0
    calls_by_endpoint: dict[str, int] = field(default_factory=dict)
    answered: int = 0
    scored: int = 0
    correct: int = 0
    wall_seconds: float = 0.0

    def add_row(self, row: Mapping[str, Any]) -> None:
        """Count one output row (as `core.rows.shape_row` makes it) while the file is written."""
        self.stop_reasons[row["stop_reason"]] += 1
        self.turns[row["assistant_turns"]] += 1
        self.searches[row["num_tool_calls"]] += 1
        for entry in row.get("tool_calls_by_name") or ():  # (rows shaped before calls were counted by tool)
            self.tool_calls[entry["name"]] += entry["calls"]
        self.tool_errors += row["num_tool_errors"]
        self.prompt_tokens += row["usage"]["prompt_tokens"]
        self.completion_tokens += row["usage"]["completion_tokens"]
        self.answered += row["stop_reason"] in ANSWERED
        if row["exact_match"] is not None:
            self.scored += 1
            self.correct += bool(row["exact_match"])

    @property
    def rows(self) -> int:
        return sum(self.stop_reasons.values())

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.scored if self.scored else None

    def mean(self, hist: Counter[int]) -> float:
        n = sum(hist.values())
        return sum(k * v for k, v in hist.items()) / n if n else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "rollouts_total": self.rollouts_total, "rollouts_generated": self.rollouts_done,
            "rollouts_reused": self.rollouts_reused, "rollouts_failed": self.rollouts_failed,
            "questions_skipped": self.questions_skipped, "stop_reasons": dict(self.stop_reasons),
            "failures": dict(self.failures), "turns": {str(k): v for k, v in sorted(self.turns.items())},
            "searches": {str(k): v for k, v in sorted(self.searches.items())},
            "tool_calls": dict(self.tool_calls),
            "mean_turns": round(self.mean(self.turns), 3), "mean_searches": round(self.mean(self.searches), 3),
            "tool_errors": self.tool_errors, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "teacher_calls": self.teacher_calls,
            "teacher_retries": self.teacher_retries, "calls_by_endpoint": dict(self.calls_by_endpoint),
            "answered": self.answered, "scored": self.scored,
            "correct": self.correct, "accuracy": self.accuracy, "wall_seconds": round(self.wall_seconds, 1),
        }

    @classmethod
    def from_json(cls, d: Any) -> RunStats:
        """The counts a file's record holds (derived values, such as the means, are computed again)."""
        if not isinstance(d, Mapping):
            raise ValueError("record.counts is not an object")
        try:
            return cls(
                rollouts_total=int(d.get("rollouts_total", 0)), rollouts_done=int(d.get("rollouts_generated", 0)),
                rollouts_reused=int(d.get("rollouts_reused", 0)), rollouts_failed=int(d.get("rollouts_failed", 0)),
                questions_skipped=int(d.get("questions_skipped", 0)),
                stop_reasons=Counter({str(k): int(v) for k, v in (d.get("stop_reasons") or {}).items()}),
                failures=Counter({str(k): int(v) for k, v in (d.get("failures") or {}).items()}),
                turns=Counter({int(k): int(v) for k, v in (d.get("turns") or {}).items()}),
                searches=Counter({int(k): int(v) for k, v in (d.get("searches") or {}).items()}),
                tool_calls=Counter({str(k): int(v) for k, v in (d.get("tool_calls") or {}).items()}),
                tool_errors=int(d.get("tool_errors", 0)), prompt_tokens=int(d.get("prompt_tokens", 0)),
                completion_tokens=int(d.get("completion_tokens", 0)), teacher_calls=int(d.get("teacher_calls", 0)),
                teacher_retries=int(d.get("teacher_retries", 0)),
                calls_by_endpoint={str(k): int(v) for k, v in (d.get("calls_by_endpoint") or {}).items()},
                answered=int(d.get("answered", 0)), scored=int(d.get("scored", 0)), correct=int(d.get("correct", 0)),
                wall_seconds=float(d.get("wall_seconds", 0.0)))
        except (TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"record.counts is not what this version reads ({e})") from None


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Rate:
    """Events per second from a growing counter, smoothed exponentially over about `tau` seconds.

    Rollouts finish in bursts (a window of hundreds starts together), so the mean since start says
    little at first (a 30-second run once showed `ETA 28m35s`): the clock starts at the first event,
    readings closer than `min_dt` apart are merged, and old readings fade.
    """

    def __init__(self, tau: float = 30.0, min_dt: float = 1.0) -> None:
        self.tau, self.min_dt = tau, min_dt
        self.value: float | None = None
        self._t: float | None = None
        self._n = 0.0

    def update(self, now: float, count: float) -> float | None:
        if self._t is None:
            if count > 0:
                self._t, self._n = now, count
            return self.value
        dt = now - self._t
        if dt >= self.min_dt:
            current = (count - self._n) / dt
            weight = 1.0 - math.exp(-dt / self.tau)
            self.value = current if self.value is None else self.value + weight * (current - self.value)
            self._t, self._n = now, count
        return self.value


class Monitor:
    """Counts rollouts as they finish and shows progress on `stream` (default stderr).

    `log_interval` is the seconds between lines when the stream is not a terminal; `interval`
    overrides the redraw period in both cases (`float("inf")`: count only, never display).
    """

    def __init__(self, total: int, *, stream: TextIO | None = None, interval: float | None = None,
                 gauges: Callable[[], dict[str, float]] | None = None, enabled: bool = True,
                 log_interval: float = 30.0) -> None:
        self.stats = RunStats(rollouts_total=total)
        self.stream = stream or sys.stderr
        self.tty = _isatty(self.stream)
        self.interval = interval if interval is not None else (0.5 if self.tty else log_interval)
        self.enabled = enabled and math.isfinite(self.interval)
        self.gauges = gauges  # live numbers owned by others: teacher calls, tokens, open requests
        self.in_flight = 0
        self._start = time.monotonic()
        self._rates = {"rollouts": Rate(), "calls": Rate(), "tokens": Rate()}
        self._lock = threading.Lock()  # one writer at a time: the display thread or finish()
        self._stop = threading.Event()
        self._bar: tqdm | None = None
        self._thread: threading.Thread | None = None
        self._finished = False
        self._display_pending = self.enabled  # read on every event: a plain flag, no lock

    def _start_display(self) -> None:
        """At the first event, not before: a run with nothing left to do (or one that never reaches its
        rollouts) leaves no empty bar behind and starts no thread."""
        with self._lock:
            if not self._display_pending or self._finished:
                return
            self._display_pending = False
            if self.tty:
                self._bar = tqdm(total=self.stats.rollouts_total, file=self.stream, dynamic_ncols=True,
                                 mininterval=0, leave=True,
                                 bar_format="{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
            self._thread = threading.Thread(target=self._run, name="hfdistill-progress", daemon=True)
            self._thread.start()

    # ------------------------------------------------ events (the rollout loop's thread; counters only)

    def started(self) -> None:
        if self._display_pending:
            self._start_display()
        self.in_flight += 1

    def finished(self, *, reused: bool = False) -> None:
        """A rollout finished (or was found finished in the journal); what it holds is counted when the
        output is written (`RunStats.add_row`)."""
        if self._display_pending:
            self._start_display()
        if reused:
            self.stats.rollouts_reused += 1
        else:
            self.in_flight -= 1
            self.stats.rollouts_done += 1

    def failed(self, cause: str, *, started: bool = True) -> None:
        if self._display_pending:
            self._start_display()
        if started:
            self.in_flight -= 1
        self.stats.rollouts_failed += 1
        self.stats.failures[cause] += 1

    def skipped(self, rollouts: int) -> None:
        if self._display_pending:
            self._start_display()
        self.stats.questions_skipped += 1
        self.stats.rollouts_total -= rollouts

    def clock_from_now(self) -> None:
        """Rates count from now: the minutes a teacher hfdistill started took to load are not the run's pace."""
        self._start = time.monotonic()

    # ------------------------------------------------ display

    @property
    def processed(self) -> int:
        s = self.stats
        return s.rollouts_done + s.rollouts_reused + s.rollouts_failed

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._show(final=False)

    def _show(self, *, final: bool) -> None:
        with self._lock:
            if not self.enabled:
                return
            now = time.monotonic()
            try:
                if self._bar is not None:
                    self._draw_bar(now, final)
                elif final or self.processed < self.stats.rollouts_total:  # the 100 % line comes once, at the end
                    self.stream.write(self.line(now, final=final) + "\n")
                    self.stream.flush()
            except (OSError, ValueError):
                # stderr is gone (`... 2>&1 | head` whose reader left, a closed terminal): the run
                # matters more than its progress, so stop displaying and keep counting.
                self.enabled = False

    def _numbers(self, now: float, final: bool) -> dict[str, Any]:
        """Rates for display: smoothed while running, means over the run at the end."""
        s = self.stats
        g = self.gauges() if self.gauges is not None else {}
        elapsed = max(now - self._start, 1e-9)
        made = s.rollouts_done + s.rollouts_failed  # by this run; resumed rollouts cost no time
        counts = {"rollouts": made, "calls": g.get("calls", 0.0), "tokens": g.get("tokens", 0.0)}
        rates = {k: (v / elapsed if final else self._rates[k].update(now, v)) for k, v in counts.items()}
        left = s.rollouts_total - self.processed
        eta = left / rates["rollouts"] if rates["rollouts"] and left > 0 else None
        return {"rates": rates, "eta": eta, "elapsed": elapsed, "open": g.get("requests"),
                "teacher": self.gauges is not None}

    def line(self, now: float | None = None, *, final: bool = False) -> str:
        """The log line: `[hfdistill] 420/1000 rollouts (42.0%) | elapsed 1m02s | ETA 1m25s | ...`."""
        s, n = self.stats, self._numbers(now or time.monotonic(), final)
        pct = 100.0 * self.processed / s.rollouts_total if s.rollouts_total else 100.0
        parts = [f"{self.processed}/{s.rollouts_total} rollouts ({pct:.1f}%)",
                 f"elapsed {format_duration(n['elapsed'])}"]
        if not final:
            parts.append(f"ETA {format_duration(n['eta']) if n['eta'] is not None else '?'}")
        parts.append(f"{'mean ' if final else ''}{_num(n['rates']['rollouts'])} rollouts/s")
        if n["teacher"]:
            parts.append(f"teacher {_num(n['rates']['calls'])} calls/s {_num(n['rates']['tokens'])} tok/s"
                         + (f", {n['open']:.0f} requests open" if not final and n["open"] is not None else ""))
        if not final:
            parts.append(f"in flight {self.in_flight}")
        parts.append(f"failed {s.rollouts_failed}")
        if s.rollouts_reused:
            parts.append(f"resumed {s.rollouts_reused}")
        return "[hfdistill] " + " | ".join(parts)

    def _draw_bar(self, now: float, final: bool) -> None:
        assert self._bar is not None
        s, n = self.stats, self._numbers(now, final)
        self._bar.total = s.rollouts_total
        self._bar.n = self.processed
        self._bar.set_postfix_str(self._bar_postfix(n, final), refresh=False)
        if final:
            self._bar.close()  # draws the final state once, then the newline
        else:
            self._bar.refresh()

    def _bar_postfix(self, n: dict[str, Any], final: bool) -> str:
        """The longest variant that leaves the bar a few columns and the line short of the terminal's
        width (tqdm would cut it; a full-width line wraps on some terminals)."""
        s, r = self.stats, n["rates"]
        if final:  # an interrupted run ends short of its total
            eta = "done" if self.processed >= s.rollouts_total else "stopped"
        else:
            eta = f"ETA {tqdm.format_interval(n['eta']) if n['eta'] is not None else '?'}"
        failed = f"{s.rollouts_failed} failed"
        resumed = f"{failed}, {s.rollouts_reused} resumed" if s.rollouts_reused else failed
        calls, tokens = f"{_num(r['calls'])} calls/s", f"{_num(r['tokens'], compact=True)} tok/s"
        variants = [[eta, f"{_num(r['rollouts'])} rollouts/s", f"teacher {calls} {tokens}", resumed],
                    [eta, f"{_num(r['rollouts'])}/s", calls, tokens, resumed],
                    [eta, f"{_num(r['rollouts'])}/s", calls, resumed],
                    [eta, resumed],
                    [eta, failed]]
        if not n["teacher"]:
            variants = [[p for p in v if "calls/s" not in p and "tok/s" not in p] for v in variants]
        fixed = len(f"100%|| {s.rollouts_total}/{s.rollouts_total} [{tqdm.format_interval(n['elapsed'])}, ]")
        width = _columns(self.stream)
        texts = [", ".join(v) for v in variants]
        return next((t for t in texts if fixed + len(t) + 4 < width), texts[-1])

    def finish(self) -> RunStats:
        """Stop the display, show the final state once, and return the statistics."""
        self.stats.wall_seconds = time.monotonic() - self._start
        with self._lock:
            if self._finished:
                return self.stats
            thread, self._finished = self._thread, True
        if thread is not None:
            self._stop.set()
            thread.join()
            self._show(final=True)
        return self.stats


def _num(value: float | None, *, compact: bool = False) -> str:
    if value is None:
        return "?"
    if compact and value >= 1000:
        return f"{value / 1000:.1f}k" if value < 10_000 else f"{value / 1000:.0f}k"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal
        return False


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # not a terminal after all, or a stream without a descriptor
        return 80
