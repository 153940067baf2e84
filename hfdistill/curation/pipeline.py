"""Curating one question's rollouts at a time: flags, correctness, pass rate, tokens, filters, selection.

`Curator.group` takes the rows of one question (its rollouts are consecutive in every output) and
returns the rows to write, counting every stage in the funnel. Pure but for the tokenizer it may
be handed; `generate` (from the journal) and `curate` (from a file) drive it the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hfdistill.core.errors import ConfigError
from hfdistill.curation.flags import DEFAULT_MAX_STEP_WORDS, MALFORMED_CALL, quality_flags
from hfdistill.curation.funnel import Funnel
from hfdistill.curation.select import SELECT_MODES, best_row, correctness, keeps, parse_keep, pass_rate, solved_kept
from hfdistill.judge.prompt import judgeable

__all__ = ["CurationOptions", "Curator"]

TokenCount = Callable[[Sequence[dict[str, Any]]], list[int]]


@dataclass(frozen=True)
class CurationOptions:
    """Output-time options: changing them rewrites the file from the journal, with no server call."""

    keep: tuple[str, ...] = ("all",)
    keep_malformed: bool = False
    select: str = "all"
    max_length: int | None = None
    downsample_solved: float | None = None
    downsample_seed: int = 0
    max_step_words: int = DEFAULT_MAX_STEP_WORDS
    student_tokenizer: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", parse_keep(self.keep))
        if self.select not in SELECT_MODES:
            raise ConfigError(f"--select must be one of {', '.join(SELECT_MODES)}, got {self.select!r}")
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"--max-length must be >= 1 token, got {self.max_length}")
        if self.max_length is not None and not self.student_tokenizer:
            raise ConfigError("--max-length counts tokens under the student's chat template: pass "
                              "--student-tokenizer DIR_OR_HUB_ID as well")
        if self.downsample_solved is not None and not 0 <= self.downsample_solved <= 1:
            raise ConfigError(f"--downsample-solved is the fraction of fully solved questions to keep, between 0 "
                              f"and 1, got {self.downsample_solved}")
        if self.max_step_words < 1:
            raise ConfigError(f"--max-step-words must be >= 1, got {self.max_step_words}")

    def view(self) -> dict[str, Any]:
        return {**asdict(self), "keep": ",".join(self.keep)}


class Curator:
    """Applies `CurationOptions` question by question and keeps the funnel's counts."""

    def __init__(self, options: CurationOptions, *, judged: bool, correct_by: str,
                 count_tokens: TokenCount | None = None, rates_from_rows: bool = False,
                 flags_ready: bool = False) -> None:
        self.options = options
        self.judged = judged
        self.rates_from_rows = rates_from_rows  # the rows hold part of each question's rollouts: keep their rates
        self.flags_ready = flags_ready  # the rows' flags were computed with these options (from the journal)
        self.count_tokens = count_tokens
        self.funnel = Funnel(correct_by=correct_by, budget=options.max_length)

    def group(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows of one question, annotated; returns those the file keeps."""
        o = self.options
        correct = [self._annotate(row) for row in rows]
        rate = rows[0]["pass_rate"] if self.rates_from_rows and rows else pass_rate(correct)
        tokens = self.count_tokens(rows) if self.count_tokens and rows else [r.get("num_tokens") for r in rows]
        for row, c, n in zip(rows, correct, tokens, strict=True):
            row["pass_rate"], row["num_tokens"] = rate, n
            failed = self.judged and c is None and judgeable(row["prediction"], row["golden_answers"])
            self.funnel.add(row, c, judge_failed=failed)
        if rows and rate == 1.0 and o.downsample_solved is not None and not solved_kept(
                rows[0]["question"], o.downsample_solved, o.downsample_seed):
            self.funnel.downsampled += len(rows)
            return []
        survivors = [i for i, row in enumerate(rows) if self._passes(row, correct[i])]
        if o.select == "best":
            best = best_row([rows[i] for i in survivors], [correct[i] for i in survivors])
            survivors = [survivors[best]] if best is not None else []
        self.funnel.selected += len(survivors)
        return [rows[i] for i in survivors]

    def _annotate(self, row: dict[str, Any]) -> bool | None:
        if not self.flags_ready:
            row["quality_flags"] = quality_flags(
                row["messages"], stop_reason=row["stop_reason"], prediction=row["prediction"],
                num_tool_errors=row["num_tool_errors"], num_malformed_calls=None,
                max_step_words=self.options.max_step_words)
        return correctness(row, judged=self.judged)

    def _passes(self, row: dict[str, Any], correct: bool | None) -> bool:
        if MALFORMED_CALL in row["quality_flags"] and not self.options.keep_malformed:
            self.funnel.held_back += 1
            return False
        budget = self.options.max_length
        if budget is not None and (row["num_tokens"] is None or row["num_tokens"] > budget):
            return False
        return keeps(row, self.options.keep, correct)
