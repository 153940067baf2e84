"""`hfdistill curate IN.parquet -o OUT.parquet`: re-curate an output file without the teacher.

The rows of IN are judged where they lack a verdict of the judge given (all of them, if IN was
judged by another judge or prompt), flagged, annotated and filtered by the same `Curator` that
`generate` uses, and written atomically to OUT with IN's generation record, updated: the options,
the judge, the funnel. Rollouts are never regenerated; judge calls are the only server calls.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from hfdistill.core.config import DEFAULT_CONCURRENCY_PER_ENDPOINT, JudgeConfig
from hfdistill.core.errors import InputError
from hfdistill.core.retry import RetryPolicy
from hfdistill.core.rows import output_schema
from hfdistill.core.templates import Templates
from hfdistill.curation.pipeline import CurationOptions, Curator
from hfdistill.judge.judging import JudgeItem, judge_all
from hfdistill.judge.prompt import JudgePrompt, judgeable
from hfdistill.run.account import OutputLock
from hfdistill.run.output import check_output_path, read_record, write_parquet
from hfdistill.run.record import CuratedInfo, GenerationRecord, JudgeInfo

__all__ = ["CurateResult", "curate"]

log = logging.getLogger(__name__)
_NEW_COLUMNS = ("judge_correct", "judge_rationale", "pass_rate", "num_tokens")  # absent from older files


@dataclass
class CurateResult:
    output: Path
    rows: int
    record: GenerationRecord

    @property
    def exit_code(self) -> int:
        return 0 if self.record.complete else 3


@dataclass(frozen=True)
class _Judged:
    """Which judge's verdicts the rows hold after judging: its spec and model."""

    spec: str
    model: str | None


def curate(source: str | Path, output: str | Path, options: CurationOptions, *, judge: JudgeConfig | None = None,
           template_dir: str | None = None, retry: RetryPolicy | None = None,
           window: int = DEFAULT_CONCURRENCY_PER_ENDPOINT, command: str = "") -> CurateResult:
    """Re-curate the hfdistill output `source` into `output` (which may be the same file)."""
    record = read_record(source)
    if record is None:
        raise InputError(f"{source} has no hfdistill generation record; pass a file written by hfdistill")
    out = check_output_path(output)
    with OutputLock(out, command):  # never beside a run (or another curate) writing the same file
        return _curate(Path(source), out, record, options, judge=judge, template_dir=template_dir,
                       retry=retry or RetryPolicy(), window=window, command=command)


def _curate(source: Path, out: Path, record: GenerationRecord, options: CurationOptions, *,
            judge: JudgeConfig | None, template_dir: str | None, retry: RetryPolicy, window: int,
            command: str) -> CurateResult:
    table = pq.read_table(source)
    rows = table.to_pylist()
    for row in rows:
        for column in _NEW_COLUMNS:
            row.setdefault(column, None)
        if "tool_calls_by_name" not in row:  # a file from when search was the only tool: its calls were searches
            row["tool_calls_by_name"] = [{"name": "search", "calls": row["num_tool_calls"]}] if row["num_tool_calls"] \
                else []
    judged = _judge_rows(rows, judge, record, template_dir, retry, window) if judge is not None else None
    if judged is not None and judge is not None:
        record = record.replace(judge=JudgeInfo(judged.model, urlsplit(judge.url).hostname, judged.spec))
    curator = _curator(options, record, whole=record.rows == record.rollouts)
    kept = (row for _, group in itertools.groupby(rows, key=lambda r: r["input_index"])
            for row in curator.group(list(group)))
    written_record: list[GenerationRecord] = []

    def record_of(written: int) -> GenerationRecord:
        funnel = curator.funnel
        view = {**options.view(), "judge": judged.spec if judged is not None else None}
        written_record.append(record.replace(
            rows=written, view=view, curation=options.view(), funnel=funnel,
            complete=record.complete and not funnel.judge_failed,
            curated=CuratedInfo(str(source), command, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))))
        return written_record[-1]

    written = write_parquet(kept, out, _schema(table.schema, rows), record=record_of)
    log.info("wrote %d of %d rows to %s", written, len(rows), out)
    return CurateResult(out, written, written_record[-1])


def _curator(options: CurationOptions, record: GenerationRecord, *, whole: bool) -> Curator:
    counter = None
    if options.student_tokenizer:
        from hfdistill.curation.tokens import StudentTokens

        counter = StudentTokens.load(options.student_tokenizer).count
    curator = Curator(options, judged=record.judged, correct_by=record.correct_by, count_tokens=counter,
                      rates_from_rows=not whole)
    if not whole:
        log.warning("the input holds %s of its %s rollouts (written with --keep / --select): pass_rate is kept "
                    "from it, and the funnel counts the rows it holds", record.rows, record.rollouts)
    funnel = curator.funnel
    funnel.questions, funnel.skipped = record.input.questions, record.input.skipped
    funnel.rollouts = (funnel.questions - funnel.skipped) * record.run_options.num_rollouts
    funnel.failed = record.counts.rollouts_failed
    return curator


def _judge_rows(rows: list[dict[str, Any]], config: JudgeConfig, record: GenerationRecord, template_dir: str | None,
                retry: RetryPolicy, window: int) -> _Judged:
    """Judge the rows that lack a verdict of this judge (every row, when the file was judged by another)."""
    prompt = JudgePrompt.build(Templates(template_dir), config.model)
    if record.judge is None or record.judge.spec != prompt.spec:
        for row in rows:  # verdicts of another judge or prompt do not count for this one
            row["judge_correct"] = row["judge_rationale"] = None
    todo = [i for i, r in enumerate(rows) if r["judge_correct"] is None and judgeable(r["prediction"],
                                                                                     r["golden_answers"])]
    if todo:
        log.info("judging %d rows without a verdict", len(todo))
    items = [JudgeItem(rows[i]["question"], rows[i]["prediction"], tuple(rows[i]["golden_answers"])) for i in todo]
    judged = judge_all(config, retry, prompt, items, window=window)
    for i, verdict in zip(todo, judged.verdicts, strict=True):
        if not isinstance(verdict, Exception):
            rows[i]["judge_correct"], rows[i]["judge_rationale"] = verdict.correct, verdict.rationale
    return _Judged(prompt.spec, judged.model)


def _schema(schema: pa.Schema, rows: list[dict[str, Any]]) -> pa.Schema:
    """The output schema (with datasets' features) of rows like these; IN's extra columns are kept."""
    tools = rows[0]["tools"] if rows else []
    extra = schema.field("extra_info").type if "extra_info" in schema.names else None
    ours = output_schema(tools, extra)
    if rows:
        ours = ours.set(ours.get_field_index("tools"), schema.field("tools"))
    for field in schema:
        if field.name not in ours.names:
            ours = ours.append(field)
    return datasets.Features.from_arrow_schema(ours).arrow_schema
