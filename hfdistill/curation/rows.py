"""Output rows with their curation: quality flags and the configured judge's journaled verdict."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hfdistill.core.rows import shape_row
from hfdistill.curation.flags import DEFAULT_MAX_STEP_WORDS, quality_flags
from hfdistill.judge.prompt import stored_verdict

__all__ = ["curated_row"]


def curated_row(result: Mapping[str, Any], *, judge_spec: str | None = None,
                max_step_words: int = DEFAULT_MAX_STEP_WORDS, **row: Any) -> dict[str, Any]:
    """`rows.shape_row` (same keywords) with flags and, when `judge_spec` names a judge, its verdict."""
    verdict = stored_verdict(result, judge_spec) if judge_spec else None
    return shape_row(result, **row, flags=quality_flags(result, max_step_words=max_step_words),
                     judge_correct=verdict.correct if verdict else None,
                     judge_rationale=verdict.rationale if verdict else None)
