"""`hfdistill report`: one self-contained HTML page to look at an output file.

The charts count every row, aggregated here from the small scalar columns; the browsable list
embeds the conversations of at most `max_rows` rows, a seeded sample read row group by row group,
so the page stays a few megabytes and quick to open for an output of 100k rows. The page makes no
network request: its script and styles are inline, and it works from `file://`.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from markupsafe import Markup

from hfdistill.core.errors import InputError
from hfdistill.core.templates import render_file, report_template_path
from hfdistill.core.types import ANSWERED
from hfdistill.curation.funnel import stage_label
from hfdistill.curation.select import correctness
from hfdistill.run.output import read_record
from hfdistill.run.record import GenerationRecord

__all__ = ["DEFAULT_MAX_ROWS", "Page", "Report", "build_report", "write_report"]

DEFAULT_MAX_ROWS = 2000
_BATCH = 2048  # rows decoded at once when reading the sampled rows
_MAX_TEXT = 20_000  # characters kept of one message in the page; the file has it all
_SCALARS = ("stop_reason", "assistant_turns", "num_tool_calls", "exact_match", "usage", "prediction",
            "golden_answers", "input_index")
# Curation's columns, absent from files written before curation existed.
_OPTIONAL_SCALARS = ("quality_flags", "judge_correct", "pass_rate", "num_tokens")
_SAMPLE_COLUMNS = ("question", "golden_answers", "prediction", "messages", "stop_reason", "assistant_turns",
                   "num_tool_calls", "num_tool_errors", "exact_match", "sub_match", "f1", "usage", "input_index",
                   "rollout_index", "judge_correct", "judge_rationale")


@dataclass(frozen=True)
class Page:
    """The report's HTML, the rows its charts count and the conversations its list embeds."""

    html: str
    rows: int
    sampled: int


@dataclass(frozen=True)
class Report:
    """A written report: where, how many rows the charts count and how many conversations it embeds."""

    path: Path
    rows: int
    sampled: int
    size: int


def write_report(source: str | Path, output: str | Path, *, max_rows: int = DEFAULT_MAX_ROWS,
                 seed: int = 0) -> Report:
    """Write the report of the output parquet `source` to `output` (an HTML file)."""
    page = build_report(source, max_rows=max_rows, seed=seed)
    out = Path(output)
    try:
        out.write_text(page.html, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot write the report to {out} ({e.strerror or e}); pass -o with a writable "
                         "path") from None
    return Report(out, page.rows, page.sampled, len(page.html.encode()))


def build_report(source: str | Path, *, max_rows: int = DEFAULT_MAX_ROWS, seed: int = 0) -> Page:
    """The report page of the output parquet `source`, its list a sample of `max_rows` rows drawn with `seed`."""
    if max_rows < 0:
        raise InputError(f"--max-rows must be >= 0, got {max_rows}")
    parquet = _open(source)
    columns = set(parquet.schema_arrow.names)
    missing = [c for c in _SCALARS if c not in columns]
    if missing or "messages" not in columns:
        raise InputError(f"{source} lacks the column(s) {', '.join(missing or ['messages'])}; pass a file written "
                         "by hfdistill generate")
    scalars = parquet.read(columns=[*_SCALARS, *(c for c in _OPTIONAL_SCALARS if c in columns)])
    n = scalars.num_rows
    picked = sorted(random.Random(seed).sample(range(n), min(n, max_rows)))
    record = read_record(source)
    judged = record.judged if record is not None else False
    correct = _correctness(scalars, judged)
    data = {
        "source": Path(source).name,
        "rows": n,
        "seed": seed,
        "correct_by": record.correct_by if record is not None else "exact match",
        "budget": record.funnel.budget if record is not None and record.funnel is not None else None,
        "summary": _summary(scalars, correct),
        "funnel": _funnel(record, scalars, correct),
        "record": _record_view(record),
        "has_flags": "quality_flags" in columns,
        "samples": _sampled_rows(parquet, picked, columns, judged),
    }
    return Page(_render(data), n, len(picked))


def _correctness(t: pa.Table, judged: bool) -> list[bool | None]:
    """Each row's correctness as its run's curation decided it: the judge's verdict, else exact match."""
    judge = t.column("judge_correct").to_pylist() if "judge_correct" in t.column_names else [None] * t.num_rows
    rows = zip(t.column("golden_answers").to_pylist(), t.column("prediction").to_pylist(),
               t.column("exact_match").to_pylist(), judge, strict=True)
    return [correctness({"golden_answers": g, "prediction": p, "exact_match": em, "judge_correct": jc}, judged=judged)
            for g, p, em, jc in rows]


def _open(source: str | Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(source)
    except FileNotFoundError:
        raise InputError(f"{source} does not exist; pass an output parquet written by hfdistill generate") from None
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read {source} as parquet ({e}); pass a file written by hfdistill generate") from None


# ---------------------------------------------------------------- every row: the charts


def _summary(t: pa.Table, correct: list[bool | None]) -> dict[str, Any]:
    stop = Counter(t.column("stop_reason").to_pylist())
    turns = Counter(t.column("assistant_turns").to_pylist())
    searches_list = t.column("num_tool_calls").to_pylist()
    usage = t.column("usage").combine_chunks()
    completion = usage.field("completion_tokens").to_pylist() if len(usage) else []
    prompt = usage.field("prompt_tokens").to_pylist() if len(usage) else []
    by_searches: dict[int, list[int]] = {}
    for k, c in zip(searches_list, correct, strict=True):
        if c is not None:
            bucket = by_searches.setdefault(k, [0, 0])
            bucket[0] += 1
            bucket[1] += c
    flags: Counter[str] = Counter()
    if "quality_flags" in t.column_names:
        for value in t.column("quality_flags").to_pylist():
            flags.update(_flag_list(value))
    scored = sum(v[0] for v in by_searches.values())
    return {
        "stop_reasons": stop.most_common(),
        "turns": sorted(turns.items()),
        "searches": sorted(Counter(searches_list).items()),
        "accuracy_by_searches": [[k, v[0], v[1]] for k, v in sorted(by_searches.items())],
        "correct": sum(v[1] for v in by_searches.values()), "scored": scored,
        "completion_tokens": _histogram([c or 0 for c in completion]),
        "tokens": {"prompt": sum(p or 0 for p in prompt), "completion": sum(c or 0 for c in completion)},
        "mean_turns": _mean(turns), "mean_searches": _mean(Counter(searches_list)),
        "flags": flags.most_common(),
        "pass_rates": _pass_rates(t),
        "num_tokens": _histogram([n for n in t.column("num_tokens").to_pylist() if n is not None])
        if "num_tokens" in t.column_names else [],
    }


def _pass_rates(t: pa.Table) -> list[list[Any]]:
    """[[pass rate, questions], ...]: how many questions had each share of their rollouts correct."""
    if "pass_rate" not in t.column_names:
        return []
    rates = dict(zip(t.column("input_index").to_pylist(), t.column("pass_rate").to_pylist(), strict=True))
    return sorted([round(r, 3), n] for r, n in Counter(r for r in rates.values() if r is not None).items())


def _histogram(values: list[int], bins: int = 20) -> list[list[int]]:
    """[[low, high, count], ...] over equal-width bins of whole tokens."""
    if not values:
        return []
    low, high = min(values), max(values)
    width = max(1, -(-(high - low + 1) // bins))
    counts = Counter((v - low) // width for v in values)
    return [[low + i * width, low + (i + 1) * width - 1, counts.get(i, 0)] for i in range(max(counts) + 1)]


def _mean(hist: Counter[int]) -> float:
    total = sum(hist.values())
    return round(sum(k * v for k, v in hist.items()) / total, 3) if total else 0.0


def _flag_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, dict):  # {flag: bool} as some pipelines store it
        return [k for k, v in value.items() if v]
    return [str(v) for v in value if v]


def _funnel(record: GenerationRecord | None, t: pa.Table, correct: list[bool | None]) -> list[list[Any]]:
    """The run's funnel as its summary shows it (from the record), else what the rows themselves tell."""
    if record is not None and record.funnel is not None:
        funnel = record.funnel
        return [[stage_label(stage, funnel), count] for stage, count in funnel.stages()
                if stage not in ("questions", "skipped")]
    stop = t.column("stop_reason").to_pylist()
    steps: list[list[Any]] = []
    if record is not None and record.counts.rollouts_total:
        steps.append(["rollouts planned", record.counts.rollouts_total])
    if record is not None:
        steps.append(["rollouts finished", record.counts.rows])
    keep = record.run_options.keep if record is not None else "all"
    steps.append([f"written (keep {keep})", t.num_rows])
    steps.append(["answered (<answer>)", sum(s in ANSWERED for s in stop)])
    if any(c is not None for c in correct):
        steps.append(["exact match", sum(c is True for c in correct)])
    return steps


def _record_view(record: GenerationRecord | None) -> list[list[str]]:
    """A few lines of the generation record for the page's header."""
    if record is None:
        return [["record", "none (not written by hfdistill generate?)"]]
    options = record.generation_options.to_json()
    sampling = ", ".join(f"{k} {'server default' if options.get(k) is None else options.get(k)}"
                         for k in ("temperature", "top_p", "presence_penalty", "max_tokens", "max_assistant_turns"))
    view = [["teacher", f"{record.teacher.model or '?'} ({record.teacher.protocol or '?'} tool calls)"],
            ["input", record.input.source or "?"], ["sampling", sampling], ["correct by", record.correct_by]]
    if record.funnel is not None and record.funnel.budget:
        view.append(["token budget", f"{record.funnel.budget:,} (--max-length)"])
    return [*view, ["hfdistill", record.hfdistill_version]]


# ---------------------------------------------------------------- sampled rows: the list


def _sampled_rows(parquet: pq.ParquetFile, picked: list[int], columns: set[str], judged: bool) -> list[dict[str, Any]]:
    """The picked rows, read a row group at a time (a batch at a time within a big one), skipping
    groups with no picked row: a 100k-row file's messages are never all in memory. One thread:
    pyarrow's read-ahead over a whole-file scan doubled the peak memory for no gain in speed."""
    wanted = [c for c in (*_SAMPLE_COLUMNS, *_OPTIONAL_SCALARS) if c in columns]
    out: list[dict[str, Any]] = []
    start, k = 0, 0
    for group in range(parquet.num_row_groups):
        end = start + parquet.metadata.row_group(group).num_rows
        if k < len(picked) and picked[k] < end:
            if end - start <= _BATCH:
                batches = parquet.read_row_group(group, columns=wanted, use_threads=False).to_batches()
            else:
                batches = parquet.iter_batches(batch_size=_BATCH, row_groups=[group], columns=wanted,
                                               use_threads=False)
            for batch in batches:
                local = []
                while k < len(picked) and picked[k] < start + batch.num_rows:
                    local.append(picked[k] - start)
                    k += 1
                if local:
                    taken = batch.take(pa.array(local)).to_pylist()
                    out.extend(_compact(start + i, row, judged) for i, row in zip(local, taken, strict=True))
                start += batch.num_rows
        start = end
    return out


def _compact(index: int, row: dict[str, Any], judged: bool) -> dict[str, Any]:
    usage = row.get("usage") or {}
    verdict = {"golden_answers": row.get("golden_answers") or [], "prediction": row.get("prediction") or "",
               "exact_match": row.get("exact_match"), "judge_correct": row.get("judge_correct")}
    return {
        "c": correctness(verdict, judged=judged), "jr": row.get("judge_rationale"), "pr": row.get("pass_rate"),
        "nt": row.get("num_tokens"),
        "i": index, "q": row.get("question") or "", "g": row.get("golden_answers") or [],
        "p": row.get("prediction") or "", "s": row.get("stop_reason"), "t": row.get("assistant_turns"),
        "n": row.get("num_tool_calls"), "e": row.get("num_tool_errors"), "em": row.get("exact_match"),
        "sm": row.get("sub_match"), "f1": row.get("f1"), "ii": row.get("input_index"), "ri": row.get("rollout_index"),
        "u": [usage.get("prompt_tokens"), usage.get("completion_tokens")],
        "fl": _flag_list(row.get("quality_flags")),
        "m": [_message(m) for m in row.get("messages") or ()],
    }


def _message(m: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"r": m.get("role")}
    for key, short in (("content", "c"), ("reasoning_content", "th")):
        if m.get(key):
            out[short] = _cut(m[key])
    if m.get("tool_calls"):
        out["calls"] = [[c["function"]["name"], _cut(c["function"]["arguments"])] for c in m["tool_calls"]]
    if m.get("name"):
        out["name"] = m["name"]
    return out


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else f"{text[:_MAX_TEXT]}\n… [{len(text) - _MAX_TEXT:,} more characters]"


# ---------------------------------------------------------------- the page


def _render(data: dict[str, Any]) -> str:
    # Inside <script>, only "</script" or "<!--" could end the block early: escape every "<", ">", "&".
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return render_file(report_template_path(), {"title": f"hfdistill report: {data['source']}",
                                                 "data_json": Markup(payload)}, autoescape=True,
                       keep_trailing_newline=True)
