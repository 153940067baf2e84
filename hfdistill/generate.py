"""`hfdistill generate`: input -> Distiller via Dataset.map -> journal -> atomic parquet + failures file.

The journal in a run directory (named by a fingerprint of the input and of every option that
changes a rollout) is the source of truth; the parquet is a view of it, written only at the end.
Rerunning the same command resumes; a finished command is a no-op.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import datasets

from hfdistill import __version__
from hfdistill.config import DistillConfig
from hfdistill.distiller import Distiller
from hfdistill.errors import ConfigError, Interrupted
from hfdistill.inputs import input_kind, load_input
from hfdistill.journal import Journal
from hfdistill.output import check_output_path, failures_path, read_record, write_failures, write_parquet
from hfdistill.progress import Monitor, RunStats

__all__ = ["KEEP_MODES", "GenerateOptions", "GenerateResult", "generate"]

log = logging.getLogger(__name__)
KEEP_MODES = ("all", "answered", "correct")
_INPUT_CHUNK = 512  # input rows read at a time while writing the output
EXIT_INCOMPLETE = 3


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

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.keep not in KEEP_MODES:
            raise ConfigError(f"--keep must be one of {', '.join(KEEP_MODES)}, got {self.keep!r}")


@dataclass
class GenerateResult:
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
        return _generate(config, options)


def _generate(config: DistillConfig, options: GenerateOptions) -> GenerateResult:
    output = check_output_path(options.output_file)
    distiller = Distiller(config)  # renders every template once: template errors surface here
    ds = load_input(options.input_file, max_samples=options.max_samples)
    distiller.bind_input(ds.features)
    gen_options = generation_options(distiller)
    fingerprint = _fingerprint(ds, gen_options, distiller)
    view = {"keep": options.keep, "num_rollouts": config.num_rollouts, "max_samples": options.max_samples}
    run_dir = output.parent / ".hfdistill" / f"{output.name}-{fingerprint[:12]}"
    done = _check_existing(output, run_dir, fingerprint, gen_options, view, options.overwrite)
    if done is not None:
        return done  # before any server is contacted: a finished command needs no GPU
    _note_other_runs(output, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"fingerprint": fingerprint, "options": gen_options,
                                                  "input": options.input_file}, indent=2))
    journal = Journal(run_dir / "journal.jsonl")
    if len(journal):
        log.info("resuming: %d rollouts already recorded in %s", len(journal), run_dir)
    monitor = Monitor(len(ds) * config.num_rollouts, gauges=distiller.gauges)
    distiller.journal, distiller.monitor = journal, monitor
    # The servers are probed as map starts, before its first rollout: one client per run.
    log.info("distilling %d questions x %d rollouts", len(ds), config.num_rollouts)
    # Throughput: objects from imports and set-up live all run, so the collector need not rescan them,
    # and a rollout makes many short-lived objects that reference counting frees on its own.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    distiller.emit_rows = False  # the journal holds every result; the output is written from it below
    try:
        try:
            with _signals(distiller):
                distiller.map(ds, batch_size=options.batch_size, load_from_cache_file=False,
                              cache_file_name=str(run_dir / "map.arrow"), desc="hfdistill")
        finally:
            stats = monitor.finish()
            _remove_map_cache(run_dir)
        fails = failures_path(output)
        write_failures(fails, distiller.failures)
        if distiller.stopping:
            raise Interrupted(f"interrupted: {len(journal)} rollouts are recorded in {run_dir}; rerun the same "
                              "command to resume")
        return _write_output(distiller, journal, ds, options, output, fails, stats,
                             lambda rows: _record(distiller, options, gen_options, fingerprint, view, stats,
                                                  len(ds), rows, complete=not distiller.failures))
    finally:
        journal.close()


def _write_output(distiller: Distiller, journal: Journal, ds: datasets.Dataset, options: GenerateOptions,
                  output: Path, fails: Path, stats: RunStats, record: Any) -> GenerateResult:
    records: list[dict[str, Any]] = []

    def keep_record(rows: int) -> dict[str, Any]:
        records.append(record(rows))
        return records[-1]

    assert distiller.schema is not None
    rows = _kept(_journal_rows(distiller, journal, ds), options.keep)
    written = write_parquet(rows, output, distiller.schema, record=keep_record)
    return GenerateResult(output=output, failures=fails, stats=stats, complete=not distiller.failures,
                          kept_rows=written, record=records[-1])


def _journal_rows(distiller: Distiller, journal: Journal, ds: datasets.Dataset) -> Iterator[dict[str, Any]]:
    """Output rows in (input, rollout) order: the journal merged with the input, streamed."""
    wanted = sorted(k for k in journal if k[0] < len(ds) and k[1] < distiller.config.num_rollouts)
    position = 0
    for start in range(0, len(ds), _INPUT_CHUNK):
        chunk = ds[start:start + _INPUT_CHUNK]
        columns = list(chunk)
        for offset in range(len(chunk[columns[0]]) if columns else 0):
            index = start + offset
            if position >= len(wanted) or wanted[position][0] != index:
                continue
            input_row = {c: chunk[c][offset] for c in columns}
            question = distiller.plan.question_of(input_row) if distiller.plan else ""
            while position < len(wanted) and wanted[position][0] == index:
                recorded = journal.get(wanted[position])
                # a stale record (another model) whose regeneration failed is in the failures file instead
                if distiller.matches(recorded, question):
                    yield distiller.row(input_row, index, wanted[position][1], recorded["result"])
                position += 1


def _kept(rows: Iterator[dict[str, Any]], keep: str) -> Iterator[dict[str, Any]]:
    for row in rows:
        if keep == "all" or (keep == "answered" and row["stop_reason"] == "answer") or (
                keep == "correct" and row["exact_match"] is True):
            yield row


def generation_options(distiller: Distiller) -> dict[str, Any]:
    """Every option that changes what one rollout produces.

    URLs are left out (a server that moved is the same server), and so is the model id the server
    reports when --model is not given: each journal line records the model that made it instead.
    """
    c = distiller.config
    corpus = None
    if c.corpus:
        st = os.stat(c.corpus)
        corpus = {"path": os.path.abspath(c.corpus), "size": st.st_size, "mtime": int(st.st_mtime)}
    return {
        "model": distiller.config.model, "tool_call_mode": c.tool_call_mode, "temperature": c.temperature,
        "top_p": c.top_p, "presence_penalty": c.presence_penalty, "max_tokens": c.max_tokens, "seed": c.seed,
        "max_assistant_turns": c.max_assistant_turns, "topk": c.topk, "query_arg": c.query_arg,
        "observation_format": c.observation_format, "question_field": c.question_field,
        "answer_field": c.answer_field, "corpus": corpus, "templates": distiller.prompts.templates.digest(),
    }


def _fingerprint(ds: datasets.Dataset, gen_options: dict[str, Any], distiller: Distiller) -> str:
    # max_samples only selects a prefix, so it stays out: growing it later reuses the journal.
    payload = {"input": ds._fingerprint if ds._fingerprint else None, "options": gen_options,
               "plan": [list(distiller.plan.question), list(distiller.plan.answers)] if distiller.plan else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _check_existing(output: Path, run_dir: Path, fingerprint: str, gen_options: dict[str, Any],
                    view: dict[str, Any], overwrite: bool) -> GenerateResult | None:
    if overwrite:
        with contextlib.suppress(FileNotFoundError):
            output.unlink()
        shutil.rmtree(run_dir, ignore_errors=True)
        return None
    if not output.exists():
        return None
    record = read_record(output) or {}
    if record.get("fingerprint") != fingerprint:
        changed = _changed(record.get("generation_options", {}), gen_options)
        raise ConfigError(f"{output} already exists and was made from {changed}; pass --overwrite to "
                          "replace it, or choose another --output_file")
    if record.get("complete") and record.get("view") == view:
        log.info("%s is already complete (%s rows, same input and options); nothing to do. Pass "
                 "--overwrite to generate it again", output, record.get("rows"))
        return GenerateResult(output=output, failures=failures_path(output), stats=RunStats(), complete=True,
                              skipped_as_done=True, kept_rows=int(record.get("rows", 0)), record=record)
    return None


def _changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    diffs = [f"{k} {old.get(k)!r} (now {new.get(k)!r})" for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k)]
    return "other options: " + ", ".join(diffs) if diffs else "another input"


def _note_other_runs(output: Path, run_dir: Path) -> None:
    for other in sorted(run_dir.parent.glob(f"{output.name}-*")) if run_dir.parent.exists() else ():
        if other != run_dir and (other / "journal.jsonl").exists():
            log.warning("note: %s holds a run of %s with other input or options; it is left alone "
                        "(delete it if unneeded)", other, output.name)


def _record(distiller: Distiller, options: GenerateOptions, gen_options: dict[str, Any], fingerprint: str,
            view: dict[str, Any], stats: RunStats, questions: int, rows: int, *, complete: bool) -> dict[str, Any]:
    c = distiller.config
    return {
        "hfdistill_version": __version__, "fingerprint": fingerprint, "complete": complete, "view": view,
        "teacher": {"model": distiller.model, "hosts": [urlsplit(u).hostname for u in c.endpoints],
                    "protocol": distiller.mode},
        "retrieval": {"corpus": os.path.basename(c.corpus)} if c.corpus else
                     {"host": urlsplit(c.retrieval_url).hostname},
        "generation_options": gen_options,
        "run_options": {"num_rollouts": c.num_rollouts, "keep": options.keep, "max_samples": options.max_samples,
                        "batch_size": options.batch_size, "concurrency": c.window},
        "templates": {"names": list(distiller.prompts.templates.names),
                      "sha256": distiller.prompts.templates.digest()},
        "input": {"source": options.input_file, "kind": input_kind(options.input_file), "questions": questions,
                  "question_fields": list(distiller.plan.question) if distiller.plan else [],
                  "answer_fields": list(distiller.plan.answers) if distiller.plan else []},
        "rows": rows, "counts": stats.to_dict(), "command": options.command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _remove_map_cache(run_dir: Path) -> None:
    # `map` writes (empty) batches to a cache file; the journal is the record of the run.
    for f in run_dir.glob("map*.arrow"):
        with contextlib.suppress(OSError):
            f.unlink()


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
def _quiet_datasets() -> Iterator[None]:
    """Our progress line replaces datasets' tqdm bar, which would fight it on stderr."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
