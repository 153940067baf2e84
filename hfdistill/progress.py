"""Run statistics, the progress line on stderr, and the end-of-run summary."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["Monitor", "RunStats", "format_duration"]


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

    def add_result(self, result: dict[str, Any], exact_match: bool | None) -> None:
        self.stop_reasons[result["stop_reason"]] += 1
        self.turns[result["assistant_turns"]] += 1
        self.searches[result["num_tool_calls"]] += 1
        self.tool_errors += result["num_tool_errors"]
        self.prompt_tokens += result["usage"]["prompt_tokens"]
        self.completion_tokens += result["usage"]["completion_tokens"]
        self.answered += result["stop_reason"] == "answer"
        if exact_match is not None:
            self.scored += 1
            self.correct += bool(exact_match)

    @property
    def rows(self) -> int:
        return sum(self.stop_reasons.values())

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.scored if self.scored else None

    def mean(self, hist: Counter[int]) -> float:
        n = sum(hist.values())
        return sum(k * v for k, v in hist.items()) / n if n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "rollouts_total": self.rollouts_total, "rollouts_generated": self.rollouts_done,
            "rollouts_reused": self.rollouts_reused, "rollouts_failed": self.rollouts_failed,
            "questions_skipped": self.questions_skipped, "stop_reasons": dict(self.stop_reasons),
            "failures": dict(self.failures), "turns": {str(k): v for k, v in sorted(self.turns.items())},
            "searches": {str(k): v for k, v in sorted(self.searches.items())},
            "mean_turns": round(self.mean(self.turns), 3), "mean_searches": round(self.mean(self.searches), 3),
            "tool_errors": self.tool_errors, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "teacher_calls": self.teacher_calls,
            "teacher_retries": self.teacher_retries, "calls_by_endpoint": dict(self.calls_by_endpoint),
            "answered": self.answered, "scored": self.scored,
            "correct": self.correct, "accuracy": self.accuracy, "wall_seconds": round(self.wall_seconds, 1),
        }


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Monitor:
    """Counts rollouts as they finish and prints a throttled progress line to stderr."""

    def __init__(self, total: int, *, stream: TextIO | None = None, interval: float | None = None,
                 gauges: Callable[[], dict[str, float]] | None = None, enabled: bool = True) -> None:
        self.stats = RunStats(rollouts_total=total)
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.5 if self.tty else 10.0)
        self.gauges = gauges  # live numbers owned by others: in-flight requests, teacher calls, tokens
        self.in_flight = 0
        self._start = time.monotonic()
        self._last = 0.0

    def started(self) -> None:
        self.in_flight += 1

    def finished(self, result: dict[str, Any], exact_match: bool | None, *, reused: bool = False) -> None:
        if reused:
            self.stats.rollouts_reused += 1
        else:
            self.in_flight -= 1
            self.stats.rollouts_done += 1
        self.stats.add_result(result, exact_match)
        self.tick()

    def failed(self, cause: str, *, started: bool = True) -> None:
        if started:
            self.in_flight -= 1
        self.stats.rollouts_failed += 1
        self.stats.failures[cause] += 1
        self.tick()

    def skipped(self, rollouts: int) -> None:
        self.stats.questions_skipped += 1
        self.stats.rollouts_total -= rollouts
        self.tick()

    def tick(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if force or now - self._last >= self.interval:
            self._last = now
            end = "\r" if self.tty and not force else "\n"
            self.stream.write(self.line(now) + ("\x1b[K" if self.tty else "") + end)
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        s = self.stats
        elapsed = (now or time.monotonic()) - self._start
        done = s.rollouts_done + s.rollouts_reused + s.rollouts_failed
        rate = s.rollouts_done / elapsed if elapsed > 0 else 0.0
        left = s.rollouts_total - done
        eta = format_duration(left / rate) if rate > 0 and left > 0 else "-"
        pct = 100.0 * done / s.rollouts_total if s.rollouts_total else 100.0
        parts = [f"{done}/{s.rollouts_total} rollouts ({pct:.1f}%)", f"{rate:.2f}/s", f"ETA {eta}",
                 f"in flight {self.in_flight}", f"failed {s.rollouts_failed}"]
        if self.gauges is not None:
            g = self.gauges()
            parts.append(f"teacher {g.get('calls', 0) / max(elapsed, 1e-9):.1f} calls/s "
                         f"{g.get('tokens', 0) / max(elapsed, 1e-9):.0f} tok/s, {g.get('requests', 0):.0f} requests "
                         "open")
        if s.rollouts_reused:
            parts.append(f"resumed {s.rollouts_reused}")
        return "[hfdistill] " + " | ".join(parts)

    def finish(self) -> RunStats:
        self.stats.wall_seconds = time.monotonic() - self._start
        self.tick(force=True)
        return self.stats
