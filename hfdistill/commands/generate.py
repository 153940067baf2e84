"""`hfdistill generate`: input -> `Distiller.map` into a journaling run -> the output file, atomically.

The run's journal (see `run`, `journal`) is the source of truth: every finished rollout (and
every finished turn of one in flight) is appended to it before it counts, and the parquet is
written from it, in input order, only at the end, then read back and checked against the account
of every rollout the input owes. Rerunning the same command resumes; a finished command is a no-op.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import datasets

from hfdistill import __version__
from hfdistill.core.config import DistillConfig
from hfdistill.core.errors import ConfigError, Interrupted, JournalError
from hfdistill.core.rows import MALFORMED_CALL, extra_info_of
from hfdistill.core.types import StopRequest
from hfdistill.curation.pipeline import CurationOptions, Curator
from hfdistill.curation.rows import curated_row
from hfdistill.curation.select import KEEP_VALUES, parse_keep
from hfdistill.engines import check_engine
from hfdistill.engines.distiller import Distiller
from hfdistill.run.account import Account, OutputLock, Run
from hfdistill.run.identity import InputItems, RunIdentity, identify, rollout_options, scan_items
from hfdistill.run.inputs import input_kind, load_input
from hfdistill.run.output import check_output_path, failures_path, skipped_path, write_jsonl, write_parquet
from hfdistill.run.progress import Monitor, RunStats

__all__ = ["EXIT_INCOMPLETE", "KEEP_MODES", "GenerateOptions", "GenerateResult", "generate"]

log = logging.getLogger(__name__)
KEEP_MODES = KEEP_VALUES
EXIT_INCOMPLETE = 3
_INPUT_CHUNK = 512  # input rows read at a time while writing the output


@dataclass(frozen=True)
class GenerateOptions:
    """What `generate` needs beyond the per-rollout configuration."""

    input_file: str
    output_file: str
    max_samples: int = -1
    batch_size: int = 16
    keep: str = "all"  # comma-separated KEEP_MODES
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
    """What a run did: where its files are, its statistics, and whether every rollout finished."""

    output: Path
    failures: Path
    stats: RunStats
    complete: bool
    skipped_as_done: bool = False
    kept_rows: int = 0
    held_back: dict[str, int] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.complete else EXIT_INCOMPLETE


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
    distiller.bind_input(ds.features)  # a missing field fails here, before any server is contacted
    assert distiller.plan is not None
    items = scan_items(ds, distiller.plan, with_golden=distiller.prompts.uses_golden_answers)
    identity = identify(rollout_options(config, templates=distiller.prompts.templates.digest(),
                                        corpus=distiller.corpus_digest(),
                                        retriever=distiller.retriever_identity()), output)
    done = identity.existing(items.digest, _view(distiller, options), options.overwrite)
    if done is not None:  # a finished command needs no server
        log.info("%s is already complete (%s rows, same input and options); nothing to do. Pass --overwrite to "
                 "generate it again", output, done.get("rows"))
        return GenerateResult(output, failures_path(output), RunStats(), complete=True, skipped_as_done=True,
                              kept_rows=int(done.get("rows", 0)), record=done)
    identity.note_other_runs()
    curator = _curator(distiller, options.curate)  # loads the student's tokenizer: a bad one fails before any call
    monitor = Monitor(len(ds) * config.num_rollouts, gauges=distiller.gauges, enabled=options.progress,
                      log_interval=options.log_interval)
    started = time.monotonic()
    with Run(identity, items, config.num_rollouts, monitor) as run:
        if distiller.judge_prompt is not None:  # what earlier runs journaled without a verdict
            from hfdistill.commands.judging import judge_journal

            judge_journal(distiller, ds, run)
        if run.pending:
            live = _run_rollouts(distiller, ds, run, options, stop)
        else:
            log.info("every rollout is recorded in %s; writing %s from it (no server contacted)", identity.run_dir,
                     output)
            live = RunStats()
        account = run.account(interrupted=distiller.stopping)
        write_jsonl(failures_path(output), account.failed)
        write_jsonl(skipped_path(output), [{"input_index": i, "reason": "blank question"}
                                           for i, item in enumerate(items.ids) if item is None])
        if distiller.stopping:
            raise Interrupted(f"interrupted: {len(run.journal or ())} rollouts are recorded in {identity.run_dir}; "
                              "rerun the same command to resume")
        live.wall_seconds = time.monotonic() - started
        return _write_output(distiller, ds, run, options, identity, _Counts(live, account, items), curator)


def _run_rollouts(distiller: Distiller, ds: datasets.Dataset, run: Run, options: GenerateOptions,
                  stop: StopRequest) -> RunStats:
    """Every rollout not in the journal yet, through `Distiller.map` (the API's path), into the run."""
    log.info("distilling %d questions x %d rollouts; %d still to make", len(ds), distiller.config.num_rollouts,
             run.pending)
    try:
        if options.engine == "ray":
            from hfdistill.engines.ray import run_on_ray

            run_on_ray(distiller, ds, run, stop=stop, actors=options.ray_actors, jobs_per_task=options.batch_size)
        else:
            # The servers are probed as map starts, before its first rollout: one client per run.
            distiller.map(ds, recorder=run, stop=stop, batch_size=options.batch_size, load_from_cache_file=False,
                          cache_file_name=str(run.identity.run_dir / "map.arrow"), desc="hfdistill")
    finally:
        stats = run.monitor.finish()
        teacher = distiller.teacher_stats
        stats.teacher_calls, stats.teacher_retries = teacher.calls, teacher.retries
        stats.calls_by_endpoint = dict(teacher.by_endpoint)
        for cache in run.identity.run_dir.glob("map*.arrow"):  # map's own (empty) output
            cache.unlink(missing_ok=True)
    return stats


@dataclass
class _Counts:
    """What the run counted (live), what it accounted for, and the input it owed rollouts to."""

    live: RunStats
    account: Account
    items: InputItems


def _write_output(distiller: Distiller, ds: datasets.Dataset, run: Run, options: GenerateOptions,
                  identity: RunIdentity, counts: _Counts, curator: Curator) -> GenerateResult:
    """Stream the journaled rollouts, in input order, question by question through curation into the file."""
    stats = _stats_from(counts.live)
    stats.questions_skipped = counts.items.blank
    stats.rollouts_failed = len(counts.account.failed)  # lost rollouts included
    stats.failures = Counter(f["cause"] for f in counts.account.failed)
    models: dict[str, str | None] = {}
    records: list[dict[str, Any]] = []
    funnel = curator.funnel
    funnel.questions, funnel.skipped = len(counts.items), counts.items.blank
    funnel.rollouts = (len(counts.items) - counts.items.blank) * distiller.config.num_rollouts
    funnel.failed = stats.rollouts_failed
    rows = _journal_rows(distiller, ds, run, stats, models, curator.options.max_step_words)
    kept = (row for _, group in itertools.groupby(rows, key=lambda r: r["input_index"])
            for row in curator.group(list(group)))

    def record(written: int) -> dict[str, Any]:
        if distiller.judge_prompt is not None:
            funnel.correct_by = f"LLM judge {distiller.judge_model or models.get('judge') or ''}".strip()
        records.append(_record(distiller, identity, options, counts, stats, written=written,
                               held_back={MALFORMED_CALL: funnel.held_back}, models=models,
                               funnel=funnel.to_dict()))
        return records[-1]

    assert distiller.schema is not None
    written = write_parquet(kept, identity.output, distiller.schema, record=record)
    if stats.rows != counts.account.finished:  # the file must hold what the account says, no less
        raise JournalError(f"{identity.output} was written from {stats.rows} journaled rollouts, but the run accounts "
                           f"for {counts.account.finished}; rerun the same command to write it again")
    return GenerateResult(identity.output, failures_path(identity.output), stats,
                          complete=bool(records[-1]["complete"]), kept_rows=written,
                          held_back={MALFORMED_CALL: funnel.held_back}, record=records[-1])


def _curator(distiller: Distiller, options: CurationOptions) -> Curator:
    counter = None
    if options.student_tokenizer:
        from hfdistill.curation.tokens import StudentTokens

        counter = StudentTokens.load(options.student_tokenizer).count
    judged = distiller.judge_prompt is not None
    return Curator(options, judged=judged, correct_by="LLM judge" if judged else "exact match", count_tokens=counter,
                   flags_ready=True)  # curated_row flags each journaled result with these options


def _journal_rows(distiller: Distiller, ds: datasets.Dataset, run: Run, stats: RunStats,
                  models: dict[str, str | None], max_step_words: int) -> Iterator[dict[str, Any]]:
    """Output rows in (input, rollout) order: the journal merged with the input, streamed, counted."""
    assert distiller.plan is not None and run.journal is not None
    plan, finished, n = distiller.plan, run.finished_keys(), distiller.config.num_rollouts
    for start in range(0, len(ds), _INPUT_CHUNK):
        chunk = ds[start:start + _INPUT_CHUNK]
        for offset in range(len(next(iter(chunk.values()), []))):
            index = start + offset
            item = run.items.ids[index]
            keys = [(item, r) for r in range(n) if (item, r) in finished] if item is not None else []
            if not keys:
                continue
            row = {column: values[offset] for column, values in chunk.items()}
            for key in keys:
                recorded = run.journal.get(key)
                out = curated_row(recorded.result, question=plan.question_of(row), golden_answers=plan.answers_of(row),
                                tools=distiller.tools, extra_info=extra_info_of(row, index), input_index=index,
                                rollout_index=key[1], judge_spec=distiller.judge_spec, max_step_words=max_step_words)
                stats.add_result(recorded.result, out["exact_match"])
                models.setdefault("model", recorded.model)
                models.setdefault("protocol", recorded.protocol)
                if out["judge_correct"] is not None:
                    models.setdefault("judge", recorded.result["judge"].get("model"))
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
            stats: RunStats, *, written: int, held_back: dict[str, int],
            models: dict[str, str | None], funnel: dict[str, Any]) -> dict[str, Any]:
    """The generation record stored in the output file (read by `card` and `push`)."""
    c, plan, items = distiller.config, distiller.plan, counts.items
    judge = c.judge
    return {
        "hfdistill_version": __version__, "fingerprint": identity.fingerprint,
        "complete": not counts.account.failed and not funnel["judge_failed"], "input_digest": items.digest,
        "view": _view(distiller, options), "curation": options.curate.view(), "funnel": funnel,
        "judge": None if judge is None else {"model": distiller.judge_model or models.get("judge"),
                                             "host": urlsplit(judge.url).hostname, "spec": distiller.judge_spec,
                                             "calls": distiller.judge_stats.calls,
                                             "retries": distiller.judge_stats.retries},
        "teacher": {"model": distiller.model or models.get("model"),
                    "hosts": [urlsplit(u).hostname for u in c.endpoints],
                    "protocol": distiller.mode or models.get("protocol")},
        "retrieval": {"corpus": os.path.basename(c.corpus), "retriever": c.retriever} if c.corpus else
                     {"host": urlsplit(c.retrieval_url).hostname},
        "generation_options": identity.options,
        "run_options": {"keep": options.keep, "keep_malformed": options.keep_malformed,
                        "num_rollouts": c.num_rollouts, "max_samples": options.max_samples,
                        "batch_size": options.batch_size, "concurrency": c.window},
        "templates": {"names": list(distiller.prompts.templates.names),
                      "sha256": distiller.prompts.templates.digest()},
        "input": {"source": options.input_file, "kind": input_kind(options.input_file), "questions": len(items),
                  "skipped": items.blank, "question_fields": list(plan.question) if plan else [],
                  "answer_fields": list(plan.answers) if plan else []},
        "rows": written, "rollouts": stats.rows, "held_back": held_back, "counts": stats.to_dict(),
        "command": options.command, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
