"""The yield funnel: how many rollouts survive each stage, and accuracy by number of searches.

questions -> skipped -> rollouts -> failed -> answered -> correct -> clean -> within the token budget
-> selected. From `answered` on each stage keeps part of the previous one (a correct rollout is an
answered one, a clean one is correct and unflagged, ...); `selected` is what the file holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Funnel", "funnel_context", "funnel_lines", "summary_lines"]


@dataclass
class Funnel:
    """Counts of the stages, filled row by row as a file is written."""

    correct_by: str = "exact match"  # or "judge <model>"
    budget: int | None = None  # --max-length, when given
    questions: int = 0
    skipped: int = 0
    rollouts: int = 0
    failed: int = 0
    answered: int = 0
    correct: int = 0
    clean: int = 0
    within_budget: int = 0
    selected: int = 0
    unknown: int = 0  # finished rollouts whose correctness is unknown (no golden answers, or the judge failed)
    judge_failed: int = 0
    held_back: int = 0
    downsampled: int = 0
    by_searches: dict[int, list[int]] = field(default_factory=dict)  # searches -> [known, correct]

    def add(self, row: Mapping[str, Any], correct: bool | None, *, judge_failed: bool = False) -> None:
        """Count one finished rollout (before any filter)."""
        answered = row["stop_reason"] == "answer"
        self.answered += answered
        self.correct += answered and correct is True
        clean = answered and correct is True and not row["quality_flags"]
        self.clean += clean
        tokens = row.get("num_tokens")
        self.within_budget += clean and (self.budget is None or (tokens is not None and tokens <= self.budget))
        self.unknown += correct is None
        self.judge_failed += judge_failed
        if correct is not None:
            known = self.by_searches.setdefault(int(row["num_tool_calls"]), [0, 0])
            known[0] += 1
            known[1] += correct

    @property
    def finished(self) -> int:
        return self.rollouts - self.failed

    def to_dict(self) -> dict[str, Any]:
        stages = [("questions", self.questions), ("skipped", self.skipped), ("rollouts", self.rollouts),
                  ("failed", self.failed), ("answered", self.answered), ("correct", self.correct),
                  ("clean", self.clean), ("within_budget", self.within_budget), ("selected", self.selected)]
        return {
            "correct_by": self.correct_by, "budget": self.budget,
            "stages": [{"stage": name, "count": count, "of_rollouts": _share(count, self.rollouts)}
                       for name, count in stages],
            "unknown": self.unknown, "judge_failed": self.judge_failed, "held_back": self.held_back,
            "downsampled": self.downsampled,
            "accuracy_by_searches": [{"searches": k, "rollouts": v[0], "correct": v[1],
                                      "accuracy": round(v[1] / v[0], 4) if v[0] else None}
                                     for k, v in sorted(self.by_searches.items())],
        }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


_LABELS = {"questions": "questions", "skipped": "skipped (blank)", "rollouts": "rollouts",
           "failed": "failed", "answered": "answered", "correct": "correct", "clean": "clean (no quality flag)",
           "within_budget": "within the token budget", "selected": "selected (rows written)"}


def funnel_lines(funnel: Mapping[str, Any]) -> list[str]:
    """The funnel as text lines (the summary prints them; the card renders its own table)."""
    out = []
    for s in funnel["stages"]:
        label = _LABELS[s["stage"]]
        if s["stage"] == "correct":
            label += f" (by {funnel['correct_by']})"
        if s["stage"] == "within_budget":
            label += f" (<= {funnel['budget']} tokens)" if funnel["budget"] else " (no --max-length)"
        counted = s["stage"] not in ("questions", "skipped") and s["of_rollouts"] is not None
        share = f"{100 * s['of_rollouts']:.1f}%" if counted else ""
        out.append(f"{label:<48} {s['count']:>8,}  {share:>6}")
    searches = ", ".join(f"{a['searches']}: {a['correct']}/{a['rollouts']}" for a in funnel["accuracy_by_searches"])
    if searches:
        out.append(f"accuracy by searches (correct/rollouts): {searches}")
    if funnel["judge_failed"]:
        out.append(f"unjudged (the judge failed; judge_correct null, rerun to ask again): {funnel['judge_failed']:,}")
    return out


_CARD_STAGES = {"questions": "questions in the input", "skipped": "skipped (blank question)", "rollouts": "rollouts",
           "failed": "failed (not in the data)", "answered": "answered (ended with `<answer>`)",
           "correct": "correct", "clean": "clean (correct, no quality flag)",
           "within_budget": "within the token budget", "selected": "selected (the rows of this dataset)"}


def funnel_context(record: Mapping[str, Any]) -> dict[str, Any]:
    """The values of the card's Curation section (`funnel` None for a file written before there was one)."""
    funnel = record.get("funnel")
    if not funnel:
        return {"funnel": None}
    stages = []
    for s in funnel["stages"]:
        label = _CARD_STAGES.get(s["stage"], s["stage"])
        if s["stage"] == "within_budget":
            label += f" (≤ {funnel['budget']:,} tokens)" if funnel.get("budget") else " (no budget set)"
        share = "" if s["stage"] in ("questions", "skipped") or s["of_rollouts"] is None else \
            f"{100 * s['of_rollouts']:.1f}%"
        stages.append({"label": label, "count": s["count"], "share": share})
    searches = [{**a, "accuracy": f"{a['accuracy']:.3f}" if a["accuracy"] is not None else "-"}
                for a in funnel.get("accuracy_by_searches", [])]
    options = record.get("curation") or {}
    return {"funnel": stages, "correct_by": funnel.get("correct_by", "exact match"), "by_searches": searches,
            "judge_failed": funnel.get("judge_failed", 0), "unknown": funnel.get("unknown", 0),
            "curation": [(k, v) for k, v in options.items() if v not in (None, False)]}


def summary_lines(record: Mapping[str, Any]) -> list[str]:
    """The end-of-run summary's judge and yield lines, from a file's record."""
    out = []
    judge = record.get("judge") or {}
    if "calls" in judge:
        out.append(f"judge {judge['model']}: {judge['calls']:,} calls, retried {judge['retries']:,}")
    if record.get("funnel"):
        out += ["yield:", *(f"  {line}" for line in funnel_lines(record["funnel"]))]
    return out
