"""`hfdistill curate IN.parquet -o OUT.parquet`: re-curate an output file without the teacher.

The rows of IN are judged where they lack a verdict of the judge given (all of them, if IN was
judged by another judge or prompt), flagged, annotated and filtered by the same `Curator` that
`generate` uses, and written atomically to OUT with IN's generation record, updated: the options,
the judge, the funnel. Rollouts are never regenerated; judge calls are the only server calls.
"""

from __future__ import annotations

import asyncio
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

from hfdistill.commands.judging import JudgeItem, judge_many
from hfdistill.core.config import DEFAULT_CONCURRENCY_PER_ENDPOINT, JudgeConfig
from hfdistill.core.errors import InputError, JudgeError
from hfdistill.core.retry import RetryPolicy
from hfdistill.core.rows import output_schema
from hfdistill.core.templates import Templates
from hfdistill.curation.pipeline import CurationOptions, Curator
from hfdistill.judge.client import Judge
from hfdistill.judge.prompt import JudgePrompt, judgeable, parse_verdict
from hfdistill.run.account import OutputLock
from hfdistill.run.output import check_output_path, read_record, write_parquet

__all__ = ["CurateResult", "curate"]

log = logging.getLogger(__name__)
_NEW_COLUMNS = ("judge_correct", "judge_rationale", "pass_rate", "num_tokens")  # absent from older files


@dataclass
class CurateResult:
    output: Path
    rows: int
    record: dict[str, Any]

    @property
    def exit_code(self) -> int:
        return 0 if self.record["complete"] else 3


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


def _curate(source: Path, out: Path, record: dict[str, Any], options: CurationOptions, *,
            judge: JudgeConfig | None, template_dir: str | None, retry: RetryPolicy, window: int,
            command: str) -> CurateResult:
    table = pq.read_table(source)
    rows = table.to_pylist()
    for row in rows:
        for column in _NEW_COLUMNS:
            row.setdefault(column, None)
    spec, model = None, None
    if judge is not None:
        spec, model = _judge_rows(rows, judge, record, template_dir, retry, window)
    curator = _curator(options, record, judge=judge, model=model, whole=record.get("rows") == record.get("rollouts"))
    kept = (row for _, group in itertools.groupby(rows, key=lambda r: r["input_index"])
            for row in curator.group(list(group)))
    new_record: dict[str, Any] = {}

    def record_of(written: int) -> dict[str, Any]:
        funnel = curator.funnel.to_dict()
        new_record.update(record, rows=written, view={**options.view(), "judge": spec}, curation=options.view(),
                          funnel=funnel, complete=bool(record.get("complete", True)) and not funnel["judge_failed"],
                          curated={"source": str(source), "command": command,
                                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        if judge is not None:
            new_record["judge"] = {"model": model, "host": urlsplit(judge.url).hostname, "spec": spec}
        return new_record

    written = write_parquet(kept, out, _schema(table.schema, rows), record=record_of)
    log.info("wrote %d of %d rows to %s", written, len(rows), out)
    return CurateResult(out, written, new_record)


def _curator(options: CurationOptions, record: dict[str, Any], *, judge: JudgeConfig | None, model: str | None,
             whole: bool) -> Curator:
    counter = None
    if options.student_tokenizer:
        from hfdistill.curation.tokens import StudentTokens

        counter = StudentTokens.load(options.student_tokenizer).count
    judged = judge is not None or (record.get("judge") or {}).get("spec") is not None
    name = model or (record.get("judge") or {}).get("model") or ""
    curator = Curator(options, judged=judged, correct_by=f"LLM judge {name}".strip() if judged else "exact match",
                      count_tokens=counter, rates_from_rows=not whole)
    if not whole:
        log.warning("the input holds %s of its %s rollouts (written with --keep / --select): pass_rate is kept "
                    "from it, and the funnel counts the rows it holds", record.get("rows"), record.get("rollouts"))
    counts, funnel = record.get("counts", {}), curator.funnel
    inp = record.get("input", {})
    funnel.questions, funnel.skipped = int(inp.get("questions", 0)), int(inp.get("skipped", 0))
    funnel.rollouts = (funnel.questions - funnel.skipped) * int(record.get("run_options", {}).get("num_rollouts", 1))
    funnel.failed = int(counts.get("rollouts_failed", 0))
    return curator


def _judge_rows(rows: list[dict[str, Any]], config: JudgeConfig, record: dict[str, Any], template_dir: str | None,
                retry: RetryPolicy, window: int) -> tuple[str, str | None]:
    """Judge the rows that lack a verdict of this judge (every row, when the file was judged by another)."""
    prompt = JudgePrompt.build(Templates(template_dir), config.model)
    if (record.get("judge") or {}).get("spec") != prompt.spec:
        for row in rows:  # verdicts of another judge or prompt do not count for this one
            row["judge_correct"] = row["judge_rationale"] = None
    todo = [i for i, r in enumerate(rows) if r["judge_correct"] is None and judgeable(r["prediction"],
                                                                                     r["golden_answers"])]
    model = asyncio.run(_judge(rows, todo, Judge(config, retry, parse_verdict), prompt, window))
    return prompt.spec, model


async def _judge(rows: list[dict[str, Any]], todo: list[int], judge: Judge, prompt: JudgePrompt,
                 window: int) -> str | None:
    try:
        model = await judge.prepare()
        if todo:
            log.info("judging %d rows without a verdict", len(todo))
        items = [JudgeItem(rows[i]["question"], rows[i]["prediction"], tuple(rows[i]["golden_answers"])) for i in todo]
        verdicts = await judge_many(judge, prompt, items, window)
    finally:
        await judge.aclose()
    for i, verdict in zip(todo, verdicts, strict=True):
        if not isinstance(verdict, JudgeError):
            rows[i]["judge_correct"], rows[i]["judge_rationale"] = verdict.correct, verdict.rationale
    return model


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
