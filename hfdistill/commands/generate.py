"""`hfdistill generate`: input -> `Distiller.map` into a journaling run -> the output file, atomically.

The run's journal (see `run.account`, `run.journal`) is the source of truth: every finished rollout
(and every finished turn of one in flight) is appended to it before it counts, and the parquet is
written from it, in input order, only at the end, then read back and checked against the account
of every rollout the input owes. Rerunning the same command resumes; a finished command is a no-op.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import datasets
import numpy as np

from hfdistill import __version__
from hfdistill.core.config import DistillConfig
from hfdistill.core.errors import ConfigError, Interrupted, JournalError, ServerLostError
from hfdistill.core.rows import MALFORMED_CALL
from hfdistill.core.types import StopRequest
from hfdistill.curation.pipeline import CurationOptions, Curator
from hfdistill.curation.rows import curated_row
from hfdistill.curation.select import parse_keep
from hfdistill.engines import check_engine
from hfdistill.engines.distiller import Binding, Distiller
from hfdistill.judge.judging import JudgeItem, judge_all
from hfdistill.judge.prompt import judgeable
from hfdistill.run.account import Account, OutputLock, Run
from hfdistill.run.identity import RunIdentity, identify, rollout_options
from hfdistill.run.inputs import input_kind, input_rows, load_input
from hfdistill.run.items import InputItems, scan_items
from hfdistill.run.output import check_output_path, failures_path, skipped_path, write_jsonl, write_parquet
from hfdistill.run.progress import Monitor, RunStats
from hfdistill.run.record import (
    GenerationRecord,
    InputInfo,
    JudgeInfo,
    RetrievalInfo,
    RunOptions,
    TeacherInfo,
    TemplatesInfo,
)
from hfdistill.teacher.serve.fleet import Fleet
from hfdistill.teacher.serve.plan import ServePlan

__all__ = ["EXIT_INCOMPLETE", "GenerateOptions", "GenerateResult", "generate"]

log = logging.getLogger(__name__)
EXIT_INCOMPLETE = 3
T = TypeVar("T")


@dataclass(frozen=True)
class GenerateOptions:
    """What `generate` needs beyond the per-rollout configuration."""

    input_file: str
    output_file: str
    max_samples: int = -1
    batch_size: int = 16
    keep: str = "all"  # comma-separated values of curation.select.KEEP_VALUES
    keep_malformed: bool = False  # also write rows with a tool call that was not even JSON (flagged)
    # --select, --max-length, --downsample-solved, ...: applied when the file is written, like `keep`
    # (whose two fields above win over the ones in here)
    curation: CurationOptions = dataclasses.field(default_factory=CurationOptions)
    overwrite: bool = False
    command: str = ""  # the command line, recorded for reproduction
    progress: bool = True  # the progress line on stderr
    log_interval: float = 30.0  # seconds between progress lines when stderr is not a terminal
    engine: str = "local"  # where rollouts are made: this process, or a Ray cluster (see `engines`)
    ray_actors: int | None = None  # --engine ray: actors in the pool (None: from the cluster's CPUs)
    # --serve: the teacher's vLLM servers, started before the first rollout (their logs in the run directory)
    # and stopped after the last; None: the servers VLLM_URL names
    serve: ServePlan | None = None

    def __post_init__(self) -> None:
        check_engine(self.engine, self.ray_actors)
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1, got {self.batch_size}")
        parse_keep(self.keep)

    @property
    def curate(self) -> CurationOptions:
        """Every output-time option in one value."""
        return dataclasses.replace(self.curation, keep=parse_keep(self.keep), keep_malformed=self.keep_malformed)


@dataclass
class GenerateResult:
    """What a run did: where its files are, its statistics, its record, and whether every rollout finished."""

    output: Path
    failures: Path
    stats: RunStats
    record: GenerationRecord
    skipped_as_done: bool = False
    held_back: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.record.complete

    @property
    def kept_rows(self) -> int:
        return self.record.rows

    @property
    def exit_code(self) -> int:
        return 0 if self.complete else EXIT_INCOMPLETE


@dataclass(frozen=True)
class _Input:
    """The input of a run: its rows, how they are read, and the content id of each."""

    ds: datasets.Dataset
    binding: Binding
    items: InputItems


def generate(config: DistillConfig, options: GenerateOptions, *, stop: StopRequest | None = None) -> GenerateResult:
    """Run (or resume) a distillation and write the output; see the module docstring.

    `stop`, once requested (the CLI does it on SIGINT/SIGTERM), starts no new rollout: those in
    flight finish and are journaled, and `Interrupted` is raised.
    """
    output = check_output_path(options.output_file)
    with OutputLock(output, options.command):  # one process per output, from here to the end
        return _generate(config, options, output, stop or StopRequest())


def _generate(config: DistillConfig, options: GenerateOptions, output: Path, stop: StopRequest) -> GenerateResult:
    distiller = Distiller(config)  # renders every template once: template errors surface here
    ds = load_input(options.input_file, max_samples=options.max_samples)
    binding = distiller.bind(ds.features)  # a missing field fails here, before any server is contacted
    source = _Input(ds, binding, scan_items(ds, binding.plan, with_golden=distiller.prompts.uses_golden_answers))
    identity = identify(rollout_options(config, templates=distiller.prompts.templates.digest(),
                                        corpus=distiller.corpus_digest(),
                                        retriever=distiller.retriever_identity(),
                                        tools=distiller.tool_identity()), output)
    done = identity.existing(source.items.digest, _view(distiller, options), options.overwrite)
    if done is not None:  # a finished command needs no server
        log.info("%s is already complete (%d rows, same input and options); nothing to do. Pass --overwrite to "
                 "generate it again", output, done.rows)
        return GenerateResult(output, failures_path(output), RunStats(), done, skipped_as_done=True)
    identity.note_other_runs()
    curator = _curator(distiller, options.curate)  # loads the student's tokenizer: a bad one fails before any call
    monitor = Monitor(len(ds) * config.num_rollouts, gauges=distiller.gauges, enabled=options.progress,
                      log_interval=options.log_interval)
    started = time.monotonic()
    with Run(identity, source.items, config.num_rollouts, monitor) as run:
        if distiller.judge_prompt is not None:  # what earlier runs journaled without a verdict
            _judge_journal(distiller, source, run)
        if run.pending:
            live = _run_rollouts(distiller, source, run, options, stop)
        else:
            log.info("every rollout is recorded in %s; writing %s from it (no server contacted)", identity.run_dir,
                     output)
            live = RunStats()
        account = run.account(interrupted=distiller.stopping)
        write_jsonl(failures_path(output), run.failures.entries())
        write_jsonl(skipped_path(output), ({"input_index": int(i), "reason": "blank question"}
                                           for i in np.flatnonzero(source.items.blank_rows)))
        if distiller.stopping:
            recorded = f"{len(run.journal)} rollouts are recorded in {identity.run_dir}; rerun the same command to " \
                       "resume"
            if isinstance(stop.reason, ServerLostError):  # a server hfdistill ran was given up
                raise ServerLostError(f"{stop.reason}; {recorded}")
            raise Interrupted(f"interrupted: {recorded}")
        live.wall_seconds = time.monotonic() - started
        return _write_output(distiller, source, run, options, _Counts(live, account), curator)


def _run_rollouts(distiller: Distiller, source: _Input, run: Run, options: GenerateOptions,
                  stop: StopRequest) -> RunStats:
    """Every rollout not in the journal yet, streamed from the input (`Distiller.stream`) or on Ray, into the run."""
    log.info("distilling %d questions x %d rollouts; %d still to make", len(source.ds), distiller.config.num_rollouts,
             run.pending)
    try:
        if options.engine == "ray":
            from hfdistill.engines.ray import run_on_ray

            run_on_ray(distiller, source.ds, run, source.binding.plan, stop=stop, actors=options.ray_actors,
                       jobs_per_task=options.batch_size, serve=options.serve)
        else:
            with _teacher_servers(distiller, options, run, stop):
                # The servers are probed as the stream starts, before its first rollout: one client per run.
                distiller.stream(input_rows(source.ds, source.binding.plan), recorder=run, stop=stop,
                                 batch_size=options.batch_size)
    finally:
        stats = run.monitor.finish()
        teacher = distiller.teacher_stats
        stats.teacher_calls, stats.teacher_retries = teacher.calls, teacher.retries
        stats.calls_by_endpoint = dict(teacher.by_endpoint)
    return stats


@contextlib.contextmanager
def _teacher_servers(distiller: Distiller, options: GenerateOptions, run: Run, stop: StopRequest) -> Iterator[None]:
    """--serve: the teacher's servers for the length of the rollouts (their logs in the run directory); one given
    up stops the run (with why)."""
    if options.serve is None:
        yield
        return
    with Fleet(options.serve, run.identity.run_dir, progress=options.progress, on_lost=stop.because,
               cancelled=lambda: stop.requested) as fleet:
        distiller.use_teacher(fleet.start(), states=fleet.states)
        run.monitor.clock_from_now()
        yield


def _judge_journal(distiller: Distiller, source: _Input, run: Run) -> None:
    """Judge every journaled rollout of this input that the configured judge has no verdict on (rollouts
    made before a judge was configured, or that it failed on): judge calls only, never the teacher. The
    journal is read in chunks of a few windows, so what is held follows the window, not the input."""
    todo = _unjudged(distiller, source, run)
    first = next(todo, None)
    if first is None:
        return
    config, prompt = distiller.config, distiller.judge_prompt
    assert config.judge is not None and prompt is not None  # (the caller checked: a judge is configured)
    asked = failed = 0
    for chunk in _chunks(itertools.chain([first], todo), _JUDGE_CHUNK_WINDOWS * config.window):
        log.info("judging %d recorded rollouts that have no verdict yet (no teacher call)", len(chunk))
        judged = judge_all(config.judge, config.retry, prompt, [item for _, item in chunk], window=config.window,
                           stats=distiller.judge_stats)
        distiller.clients.served.judge_model = judged.model or distiller.clients.served.judge_model
        for (slot, _), verdict in zip(chunk, judged.verdicts, strict=True):
            if isinstance(verdict, Exception):
                failed += 1
            else:
                run.amend(slot, verdict)
        asked += len(chunk)
    if failed:
        log.warning("the judge failed on %d of %d rollouts; they stay unjudged (judge_correct null) and a rerun "
                    "asks again", failed, asked)


_JUDGE_CHUNK_WINDOWS = 8  # journaled rollouts judged at a time, in windows: a few, so the judge stays busy


def _unjudged(distiller: Distiller, source: _Input, run: Run) -> Iterator[tuple[int, JudgeItem]]:
    """(slot, what to judge) of each finished rollout the configured judge has no verdict on, in input order."""
    spec, finished, slots = distiller.judge_spec, run.finished_slots(), run.slots
    for row in input_rows(source.ds, source.binding.plan):
        assert row.index is not None  # (input_rows numbers every row)
        for r in range(slots.rollouts):
            slot = slots.slot(row.index, r)
            if finished[slot]:
                result = run.journal.get(slot).result
                if result.verdict_of(spec) is None and judgeable(result.prediction, row.golden_answers):
                    yield slot, JudgeItem(row.question, result.prediction, row.golden_answers)


def _chunks(items: Iterator[T], size: int) -> Iterator[list[T]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


@dataclass
class _Counts:
    """What the run counted (live) and what it accounted for."""

    live: RunStats
    account: Account


def _write_output(distiller: Distiller, source: _Input, run: Run, options: GenerateOptions, counts: _Counts,
                  curator: Curator) -> GenerateResult:
    """Stream the journaled rollouts, in input order, question by question through curation into the file."""
    stats = _stats_from(counts.live)
    stats.questions_skipped = source.items.blank
    stats.rollouts_failed = counts.account.failed  # lost rollouts included
    stats.failures = Counter(counts.account.causes)
    seen = _Seen()
    records: list[GenerationRecord] = []
    funnel = curator.funnel
    funnel.questions, funnel.skipped = len(source.items), source.items.blank
    funnel.rollouts = (len(source.items) - source.items.blank) * distiller.config.num_rollouts
    funnel.failed = stats.rollouts_failed
    rows = _journal_rows(distiller, source, run, stats, seen, curator.options.max_step_words)
    kept = (row for _, group in itertools.groupby(rows, key=lambda r: r["input_index"])
            for row in curator.group(list(group)))

    def record(written: int) -> GenerationRecord:
        if distiller.judge_prompt is not None:
            funnel.correct_by = f"LLM judge {distiller.judge_model or seen.judge or ''}".strip()
        records.append(_record(distiller, run.identity, options, counts, stats, source, written=written, seen=seen,
                               curator=curator))
        return records[-1]

    written = write_parquet(kept, run.identity.output, source.binding.schema, record=record)
    if stats.rows != counts.account.finished:  # the file must hold what the account says, no less
        raise JournalError(f"{run.identity.output} was written from {stats.rows} journaled rollouts, but the run "
                           f"accounts for {counts.account.finished}; rerun the same command to write it again")
    assert written == records[-1].rows
    return GenerateResult(run.identity.output, failures_path(run.identity.output), stats, records[-1],
                          held_back={MALFORMED_CALL: funnel.held_back})


def _curator(distiller: Distiller, options: CurationOptions) -> Curator:
    counter = None
    if options.student_tokenizer:
        from hfdistill.curation.tokens import StudentTokens

        counter = StudentTokens.load(options.student_tokenizer).count
    judged = distiller.judge_prompt is not None
    return Curator(options, judged=judged, correct_by="LLM judge" if judged else "exact match", count_tokens=counter,
                   flags_ready=True)  # curated_row flags each journaled result with these options


@dataclass
class _Seen:
    """The teacher and judge named by the journaled rollouts (when no server was asked this time)."""

    model: str | None = None
    protocol: str | None = None
    judge: str | None = None


def _journal_rows(distiller: Distiller, source: _Input, run: Run, stats: RunStats, seen: _Seen,
                  max_step_words: int) -> Iterator[dict[str, Any]]:
    """Output rows in (input, rollout) order: the journal merged with the input, streamed, counted."""
    finished, slots = run.finished_slots(), run.slots
    for row in input_rows(source.ds, source.binding.plan, extra_info=True):
        assert row.index is not None  # (input_rows numbers every row)
        for r in range(slots.rollouts):
            slot = slots.slot(row.index, r)
            if not finished[slot]:
                continue
            recorded = run.journal.get(slot)
            out = curated_row(recorded.result, question=row.question, golden_answers=row.golden_answers,
                              tools=distiller.tools, extra_info=row.extra_info, input_index=row.index,
                              rollout_index=r, judge_spec=distiller.judge_spec, max_step_words=max_step_words)
            stats.add_row(out)
            seen.model = seen.model or recorded.model
            seen.protocol = seen.protocol or recorded.protocol
            verdict = recorded.result.verdict_of(distiller.judge_spec)
            if verdict is not None:
                seen.judge = seen.judge or verdict.model
            yield out


def _stats_from(live: RunStats) -> RunStats:
    """The summary's statistics: the run's live counters; the rows' content is counted as they are written."""
    return RunStats(rollouts_total=live.rollouts_total, rollouts_done=live.rollouts_done,
                    rollouts_reused=live.rollouts_reused,
                    questions_skipped=live.questions_skipped,
                    teacher_calls=live.teacher_calls, teacher_retries=live.teacher_retries,
                    calls_by_endpoint=live.calls_by_endpoint, wall_seconds=live.wall_seconds)


def _view(distiller: Distiller, options: GenerateOptions) -> dict[str, Any]:
    """What a file's rows depend on beyond the rollouts: a file of another view is rewritten from the journal."""
    return {**options.curate.view(), "num_rollouts": distiller.config.num_rollouts, "judge": distiller.judge_spec}


def _record(distiller: Distiller, identity: RunIdentity, options: GenerateOptions, counts: _Counts,
            stats: RunStats, source: _Input, *, written: int, seen: _Seen, curator: Curator) -> GenerationRecord:
    """The generation record stored in the output file (read by `card`, `push`, `report` and reruns)."""
    c, plan, items, funnel = distiller.config, source.binding.plan, source.items, curator.funnel
    judge = None if c.judge is None else JudgeInfo(
        model=distiller.judge_model or seen.judge, host=urlsplit(c.judge.url).hostname, spec=distiller.judge_spec,
        calls=distiller.judge_stats.calls, retries=distiller.judge_stats.retries)
    return GenerationRecord(
        fingerprint=identity.fingerprint, complete=not counts.account.failed and not funnel.judge_failed,
        rows=written, rollouts=stats.rows, hfdistill_version=__version__, input_digest=items.digest,
        view=_view(distiller, options), curation=options.curate.view(), funnel=funnel, judge=judge,
        teacher=TeacherInfo(distiller.model or seen.model, tuple(str(urlsplit(u).hostname) for u in c.endpoints),
                            distiller.mode or seen.protocol),
        retrieval=RetrievalInfo(corpus=os.path.basename(c.corpus), retriever=c.retriever) if c.corpus else
        RetrievalInfo(host=urlsplit(c.retrieval_url).hostname),
        generation_options=identity.options,
        run_options=RunOptions(keep=options.keep, keep_malformed=options.keep_malformed, num_rollouts=c.num_rollouts,
                               max_samples=options.max_samples, batch_size=options.batch_size, concurrency=c.window),
        templates=TemplatesInfo(tuple(distiller.prompts.templates.names), distiller.prompts.templates.digest()),
        input=InputInfo(options.input_file, input_kind(options.input_file), len(items), items.blank,
                        tuple(plan.question), tuple(plan.answers)),
        held_back={MALFORMED_CALL: funnel.held_back}, counts=stats, command=options.command,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
