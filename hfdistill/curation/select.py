"""Which rows a file keeps: one notion of "correct", pass rates, `--keep`, best-of-n, down-sampling.

All pure. "Correct" is the judge's verdict when a judge is configured and exact match otherwise;
`--keep correct`, `pass_rate` and `--select best` all read it through `correctness`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from hfdistill.core.errors import ConfigError
from hfdistill.core.types import ANSWERED

__all__ = ["KEEP_VALUES", "SELECT_MODES", "best_row", "correctness", "keeps", "parse_keep", "pass_rate",
           "solved_kept", "with_pass_rates"]

KEEP_VALUES = ("all", "answered", "correct", "clean")
SELECT_MODES = ("all", "best")


def parse_keep(value: str | Sequence[str]) -> tuple[str, ...]:
    """`--keep correct,clean` -> ("correct", "clean"); `all` (alone or with others) filters nothing itself."""
    parts = [p.strip() for p in (value.split(",") if isinstance(value, str) else value)]
    unknown = [p for p in parts if p not in KEEP_VALUES]
    if unknown or not parts:
        raise ConfigError(f"--keep takes one or more of {', '.join(KEEP_VALUES)} separated by commas (e.g. "
                          f"--keep correct,clean), got {','.join(parts)!r}")
    chosen = tuple(v for v in KEEP_VALUES if v in parts and v != "all")
    return chosen or ("all",)


def correctness(row: Mapping[str, Any], *, judged: bool) -> bool | None:
    """Whether a row is correct: the judge's verdict with a judge, exact match without; None when unknown.

    With a judge, a rollout without a prediction is not judged (there is nothing to judge) and is not
    correct; one the judge failed on stays unknown, never silently incorrect.
    """
    if not row["golden_answers"]:
        return None
    if not judged:
        return row["exact_match"]
    if not str(row["prediction"]).strip():
        return False
    return row["judge_correct"]


def pass_rate(correct: Sequence[bool | None]) -> float | None:
    """The fraction of a question's rollouts that are correct, over those whose correctness is known."""
    known = [c for c in correct if c is not None]
    return sum(known) / len(known) if known else None


def with_pass_rates(rows: list[dict[str, Any]], *, judged: bool) -> list[dict[str, Any]]:
    """Fill `pass_rate` on rows whose question's rollouts are all among them (a `Dataset.map` batch)."""
    by_question: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        by_question.setdefault((row["input_index"], row["question"]), []).append(row)
    for group in by_question.values():
        rate = pass_rate([correctness(r, judged=judged) for r in group])
        for row in group:
            row["pass_rate"] = rate
    return rows


def keeps(row: Mapping[str, Any], keep: Sequence[str], correct: bool | None) -> bool:
    """Whether `row` passes every `--keep` value."""
    tests = {"all": True, "answered": row["stop_reason"] in ANSWERED, "correct": correct is True,
             "clean": not row["quality_flags"]}
    return all(tests[k] for k in keep)


def best_row(rows: Sequence[Mapping[str, Any]], correct: Sequence[bool | None]) -> int | None:
    """Index of a question's best rollout: correct, fewest searches, then fewest completion tokens."""
    candidates = [i for i, c in enumerate(correct) if c is True]
    if not candidates:
        return None
    return min(candidates, key=lambda i: (rows[i]["num_tool_calls"], rows[i]["usage"]["completion_tokens"],
                                          rows[i]["rollout_index"]))


def solved_kept(question: str, fraction: float, seed: int) -> bool:
    """Whether a question every rollout solved survives `--downsample-solved fraction`.

    A hash of the seed and the question, not a random stream: the same question gets the same
    decision on every rerun and in any order, and keeping more keeps a superset.
    """
    digest = hashlib.sha256(f"{seed}\0{question}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction
