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
from collections.abc import Iterator
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
    """Stream IN's rows, a few hundred at a time, through the judge (in chunks of a few windows) and the
    curator into OUT: what is held follows the window and the batch, not the file."""
    # No pre-buffering: with it, iterating batches buffers the whole file (700 MB for 200k rows).
    with pq.ParquetFile(source, buffer_size=_READ_BUFFER, pre_buffer=False) as parquet:
        read = _Read(parquet)
        judging = _Judging(judge, record, template_dir, retry, window) if judge is not None else None
        if judging is not None:
            record = record.replace(judge=judging.info())  # its model is known once the judge is asked
        curator = _curator(options, record, whole=record.rows == record.rollouts)
        rows = read.rows() if judging is None else judging.rows(read.rows())
        kept = (row for _, group in itertools.groupby(rows, key=lambda r: r["input_index"])
                for row in curator.group(list(group)))
        written_record: list[GenerationRecord] = []

        def record_of(written: int) -> GenerationRecord:
            judged = record if judging is None else record.replace(judge=judging.info())
            funnel = curator.funnel
            funnel.correct_by = judged.correct_by
            view = {**options.view(), "judge": judging.prompt.spec if judging is not None else None}
            written_record.append(judged.replace(
                rows=written, view=view, curation=options.view(), funnel=funnel,
                complete=judged.complete and not funnel.judge_failed,
                curated=CuratedInfo(str(source), command, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))))
            return written_record[-1]

        written = write_parquet(kept, out, _schema(parquet.schema_arrow, read.first()), record=record_of)
    log.info("wrote %d of %d rows to %s", written, read.count, out)
    return CurateResult(out, written, written_record[-1])


_READ_ROWS = 512  # rows of IN read at a time
_READ_BUFFER = 8 << 20  # bytes read at a time from a column chunk (a file of huge row groups stays bounded)
_JUDGE_CHUNK_WINDOWS = 8  # rows judged at a time, in windows: enough to keep the judge busy


class _Read:
    """IN's rows, batch by batch, with the columns older files lack set to None."""

    def __init__(self, parquet: pq.ParquetFile) -> None:
        self.parquet = parquet
        self.count = 0

    def first(self) -> dict[str, Any] | None:
        if self.parquet.metadata.num_rows == 0:
            return None
        return next(self.parquet.iter_batches(batch_size=1)).to_pylist()[0]

    def rows(self) -> Iterator[dict[str, Any]]:
        for batch in self.parquet.iter_batches(batch_size=_READ_ROWS):
            for row in batch.to_pylist():
                for column in _NEW_COLUMNS:
                    row.setdefault(column, None)
                if "tool_calls_by_name" not in row:  # from before calls were counted by tool: they were searches
                    row["tool_calls_by_name"] = [{"name": "search", "calls": row["num_tool_calls"]}] \
                        if row["num_tool_calls"] else []
                self.count += 1
                yield row


class _Judging:
    """The judge given to `curate`, asked about the rows that lack its verdict, a chunk of rows at a time."""

    def __init__(self, config: JudgeConfig, record: GenerationRecord, template_dir: str | None, retry: RetryPolicy,
                 window: int) -> None:
        self.config, self.retry, self.window = config, retry, window
        self.prompt = JudgePrompt.build(Templates(template_dir), config.model)
        self.other = record.judge is None or record.judge.spec != self.prompt.spec  # its verdicts do not count
        self.model: str | None = None
        self.asked = False

    def info(self) -> JudgeInfo:
        return JudgeInfo(self.model, urlsplit(self.config.url).hostname, self.prompt.spec)

    def rows(self, rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        while chunk := list(itertools.islice(rows, _JUDGE_CHUNK_WINDOWS * self.window)):
            self._judge(chunk)
            yield from chunk
        if not self.asked:  # nothing to judge: the judge is still probed, and names its model
            self._judge([])

    def _judge(self, rows: list[dict[str, Any]]) -> None:
        if self.other:
            for row in rows:
                row["judge_correct"] = row["judge_rationale"] = None
        todo = [r for r in rows if r["judge_correct"] is None and judgeable(r["prediction"], r["golden_answers"])]
        if rows and not todo:
            return
        if todo:
            log.info("judging %d rows without a verdict", len(todo))
        items = [JudgeItem(r["question"], r["prediction"], tuple(r["golden_answers"])) for r in todo]
        judged = judge_all(self.config, self.retry, self.prompt, items, window=self.window)
        self.asked, self.model = True, judged.model or self.model
        for row, verdict in zip(todo, judged.verdicts, strict=True):
            if not isinstance(verdict, Exception):
                row["judge_correct"], row["judge_rationale"] = verdict.correct, verdict.rationale


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


def _schema(schema: pa.Schema, first: dict[str, Any] | None) -> pa.Schema:
    """The output schema (with datasets' features) of rows like IN's `first`; IN's extra columns are kept."""
    tools = first["tools"] if first is not None else []
    extra = schema.field("extra_info").type if "extra_info" in schema.names else None
    ours = output_schema(tools, extra)
    if first is not None:
        ours = ours.set(ours.get_field_index("tools"), schema.field("tools"))
    for field in schema:
        if field.name not in ours.names:
            ours = ours.append(field)
    return datasets.Features.from_arrow_schema(ours).arrow_schema
