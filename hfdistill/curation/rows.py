"""Output rows with their curation: quality flags and the configured judge's journaled verdict."""

from __future__ import annotations

from typing import Any

from hfdistill.core.records import RolloutResult
from hfdistill.core.rows import shape_row
from hfdistill.curation.flags import DEFAULT_MAX_STEP_WORDS, quality_flags

__all__ = ["curated_row"]


def curated_row(result: RolloutResult, *, judge_spec: str | None = None,
                max_step_words: int = DEFAULT_MAX_STEP_WORDS, **row: Any) -> dict[str, Any]:
    """`core.rows.shape_row` (same keywords) with flags and, when `judge_spec` names a judge, its verdict."""
    flags = quality_flags(result.messages, stop_reason=result.stop_reason, prediction=result.prediction,
                          num_tool_errors=result.num_tool_errors, num_malformed_calls=result.num_malformed_calls,
                          max_step_words=max_step_words)
    return shape_row(result, **row, flags=flags, verdict=result.verdict_of(judge_spec))
