"""The end-of-run summary: every number it prints comes from the run's statistics and record."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from hfdistill.commands.generate import GenerateResult
from hfdistill.commands.summary import summary_lines
from hfdistill.run.progress import RunStats
from hfdistill.run.record import GenerationRecord, JudgeInfo, RunOptions


def _record(**fields: Any) -> GenerationRecord:
    return GenerationRecord(fingerprint="f", rollouts=4, **fields)


def _stats() -> RunStats:
    stats = RunStats(rollouts_done=3, rollouts_reused=1, questions_skipped=2, wall_seconds=75.0,
                     teacher_calls=1234, teacher_retries=5, prompt_tokens=12000, completion_tokens=3400,
                     calls_by_endpoint={"a:1": 600, "b:2": 634})
    for result, exact in [({"stop_reason": "answer", "assistant_turns": 2, "num_tool_calls": 1}, True),
                          ({"stop_reason": "answer", "assistant_turns": 3, "num_tool_calls": 2}, False),
                          ({"stop_reason": "length", "assistant_turns": 1, "num_tool_calls": 0}, None),
                          ({"stop_reason": "answer", "assistant_turns": 2, "num_tool_calls": 1}, True)]:
        stats.add_row({**result, "num_tool_errors": 0, "usage": {"prompt_tokens": 0, "completion_tokens": 0},
                       "exact_match": exact})
    return stats


def test_a_complete_run_says_what_it_wrote_and_what_it_cost() -> None:
    record = _record(complete=True, rows=2, run_options=RunOptions(keep="correct"),
                     judge=JudgeInfo("j", "localhost", "spec", calls=3, retries=0))
    result = GenerateResult(Path("out.parquet"), Path("out.failures.jsonl"), _stats(), record,
                            held_back={"malformed_call": 1})
    lines = summary_lines(result)
    assert lines[0] == ("[hfdistill] done in 1m15s: 4 rollouts finished, 2 kept (--keep correct) and written to "
                        "out.parquet")
    assert all(line.startswith("  ") for line in lines[1:])
    text = "\n".join(lines)
    assert "generated 3, resumed from the journal 1, skipped questions 2 (blank)" in text
    assert "held back: malformed_call 1 (--keep-malformed writes them)" in text
    assert "stop reasons: answer 3, length 1" in text
    assert "teacher calls 1,234 (a:1 600, b:2 634), retried 5" in text
    assert "answered 3, exact match 2/3 = 0.667" in text
    assert "judge j: 3 calls, retried 0" in text
    assert "incomplete" not in text


def test_an_incomplete_run_names_its_failures_and_the_fix() -> None:
    stats = _stats()
    stats.rollouts_failed, stats.failures = 2, Counter({"http_503": 2})
    result = GenerateResult(Path("out.parquet"), Path("out.failures.jsonl"), stats, _record(complete=False, rows=2))
    lines = summary_lines(result)
    assert lines[-2] == "  failed 2 (http_503 2) -> out.failures.jsonl"
    assert "rerun the same command" in lines[-1]
