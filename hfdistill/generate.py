"""`hfdistill generate`: input -> `Distiller.map` -> journal -> the output file, atomically.

The journal in the run directory (see `runs`) is the source of truth: every finished rollout is
appended to it before it counts, and the parquet is written from it, in input order, only at the
end. Rerunning the same command resumes; a finished command is a no-op.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from hfdistill.config import DistillConfig
from hfdistill.distiller import Distiller
from hfdistill.errors import ConfigError, Interrupted
from hfdistill.inputs import load_input
from hfdistill.journal import Journal
from hfdistill.output import check_output_path, failures_path, write_failures, write_parquet
from hfdistill.progress import Monitor, RunStats
from hfdistill.runs import RunIdentity, identify

__all__ = ["EXIT_INCOMPLETE", "KEEP_MODES", "GenerateOptions", "GenerateResult", "generate"]

log = logging.getLogger(__name__)
KEEP_MODES = ("all", "answered", "correct")
EXIT_INCOMPLETE = 3
_INPUT_CHUNK = 512  # input rows read at a time while writing the output


@dataclass(frozen=True)
class GenerateOptions:
    """What `generate` needs beyond the per-rollout configuration."""

    input_file: str
    output_file: str
    max_samples: int = -1
    batch_size: int = 16
    keep: str = "all"
    overwrite: bool = False
    command: str = ""  # the command line, recorded for reproduction
    progress: bool = True  # the progress line on stderr
    log_interval: float = 30.0  # seconds between progress lines when stderr is not a terminal

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.keep not in KEEP_MODES:
            raise ConfigError(f"--keep must be one of {', '.join(KEEP_MODES)}, got {self.keep!r}")


@dataclass
class GenerateResult:
    """What a run did: where its files are, its statistics, and whether every rollout finished."""

    output: Path
    failures: Path
    stats: RunStats
    complete: bool
    skipped_as_done: bool = False
    kept_rows: int = 0
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.complete else EXIT_INCOMPLETE


def generate(config: DistillConfig, options: GenerateOptions) -> GenerateResult:
    """Run (or resume) a distillation and write the output; see the module docstring."""
    with _quiet_datasets():
        output = check_output_path(options.output_file)
        distiller = Distiller(config)  # renders every template once: template errors surface here
        ds = load_input(options.input_file, max_samples=options.max_samples)
        distiller.bind_input(ds.features)  # a missing field fails here, before any server is contacted
        view = {"keep": options.keep, "num_rollouts": config.num_rollouts, "max_samples": options.max_samples}
        run = identify(distiller, ds, output, view)
        done = run.existing(options.overwrite)
        if done is not None:  # a finished command needs no server
            log.info("%s is already complete (%s rows, same input and options); nothing to do. Pass "
                     "--overwrite to generate it again", output, done.get("rows"))
            return GenerateResult(output, failures_path(output), RunStats(), complete=True, skipped_as_done=True,
                                  kept_rows=int(done.get("rows", 0)), record=done)
        run.note_other_runs()
        journal = _open_journal(run)
        try:
            stats = _run_rollouts(distiller, ds, journal, run, options)
            return _write_output(distiller, ds, journal, run, options, stats)
        finally:
            journal.close()


def _open_journal(run: RunIdentity) -> Journal:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "run.json").write_text(json.dumps({"fingerprint": run.fingerprint, "options": run.options},
                                                     indent=2))
    journal = Journal(run.run_dir / "journal.jsonl")
    if len(journal):
        log.info("resuming: %d rollouts already recorded in %s", len(journal), run.run_dir)
    return journal


def _run_rollouts(distiller: Distiller, ds: datasets.Dataset, journal: Journal, run: RunIdentity,
                  options: GenerateOptions) -> RunStats:
    """Every (question, rollout) not in the journal yet, through `Distiller.map` (the API's path)."""
    rollouts = len(ds) * distiller.config.num_rollouts
    monitor = Monitor(rollouts, gauges=distiller.gauges, enabled=options.progress, log_interval=options.log_interval)
    distiller.journal, distiller.monitor = journal, monitor
    distiller.emit_rows = False  # the journal holds every result; the output is written from it
    log.info("distilling %d questions x %d rollouts", len(ds), distiller.config.num_rollouts)
    try:
        with _signals(distiller), _throughput_gc():
            # The servers are probed as map starts, before its first rollout: one client per run.
            distiller.map(ds, batch_size=options.batch_size, load_from_cache_file=False,
                          cache_file_name=str(run.run_dir / "map.arrow"), desc="hfdistill")
    finally:
        stats = monitor.finish()
        teacher = distiller.teacher_stats
        stats.teacher_calls, stats.teacher_retries = teacher.calls, teacher.retries
        stats.calls_by_endpoint = dict(teacher.by_endpoint)
        for cache in run.run_dir.glob("map*.arrow"):  # map's own (empty) output
            cache.unlink(missing_ok=True)
    write_failures(failures_path(run.output), distiller.failures)
    if distiller.stopping:
        raise Interrupted(f"interrupted: {len(journal)} rollouts are recorded in {run.run_dir}; rerun the same "
                          "command to resume")
    return stats


def _write_output(distiller: Distiller, ds: datasets.Dataset, journal: Journal, run: RunIdentity,
                  options: GenerateOptions, stats: RunStats) -> GenerateResult:
    records: list[dict[str, Any]] = []

    def record(rows: int) -> dict[str, Any]:
        records.append(run.record(distiller, source=options.input_file, command=options.command,
                                  batch_size=options.batch_size, questions=len(ds), rows=rows, stats=stats))
        return records[-1]

    assert distiller.schema is not None
    rows = (r for r in _journal_rows(distiller, journal, ds) if _kept(r, options.keep))
    written = write_parquet(rows, run.output, distiller.schema, record=record)
    return GenerateResult(run.output, failures_path(run.output), stats, complete=not distiller.failures,
                          kept_rows=written, record=records[-1])


def _journal_rows(distiller: Distiller, journal: Journal, ds: datasets.Dataset) -> Iterator[dict[str, Any]]:
    """Output rows in (input, rollout) order: the journal merged with the input, streamed."""
    assert distiller.plan is not None
    rollouts: dict[int, list[int]] = {}
    for i, r in journal:
        if i < len(ds) and r < distiller.config.num_rollouts:
            rollouts.setdefault(i, []).append(r)
    for start in range(0, len(ds), _INPUT_CHUNK):
        chunk = ds[start:start + _INPUT_CHUNK]
        for offset in range(len(next(iter(chunk.values()), []))):
            index = start + offset
            if index not in rollouts:
                continue
            row = {column: values[offset] for column, values in chunk.items()}
            question = distiller.plan.question_of(row)
            for r in sorted(rollouts[index]):
                recorded = journal.get((index, r))
                # A record made by another model whose regeneration failed is in the failures file.
                if distiller.matches(recorded, question):
                    yield distiller.row(row, index, r, recorded["result"])


def _kept(row: dict[str, Any], keep: str) -> bool:
    if keep == "answered":
        return row["stop_reason"] == "answer"
    if keep == "correct":
        return row["exact_match"] is True
    return True


@contextlib.contextmanager
def _signals(distiller: Distiller) -> Iterator[None]:
    """First SIGINT/SIGTERM: start nothing new, let in-flight rollouts finish. Second: stop now."""
    def handler(signum: int, _frame: Any) -> None:
        if distiller.stopping:
            raise KeyboardInterrupt
        distiller.stop()
        sys.stderr.write(f"\n[hfdistill] {signal.Signals(signum).name}: finishing the rollouts in flight "
                         "(they are recorded); press Ctrl-C again to stop at once\n")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _throughput_gc() -> Iterator[None]:
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
    """Our progress line replaces datasets' tqdm bars, which would fight it on stderr."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
