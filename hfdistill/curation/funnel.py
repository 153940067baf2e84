"""The yield funnel: how many rollouts survive each stage, and accuracy by number of searches.

questions -> skipped -> rollouts -> failed -> answered -> correct -> clean -> within the token budget
-> selected. From `answered` on each stage keeps part of the previous one (a correct rollout is an
answered one, a clean one is correct and unflagged, ...); `selected` is what the file holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hfdistill.core.types import ANSWERED

__all__ = ["STAGES", "Funnel", "funnel_context", "funnel_lines", "stage_label"]

STAGES = ("questions", "skipped", "rollouts", "failed", "answered", "correct", "clean", "within_budget", "selected")


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
        answered = row["stop_reason"] in ANSWERED
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

    def stages(self) -> list[tuple[str, int]]:
        """(stage, count) from the input's questions to the rows written, in order."""
        return [(name, getattr(self, name)) for name in STAGES]

    def share(self, count: int) -> float | None:
        """`count` as a fraction of the rollouts (None when there were none)."""
        return _share(count, self.rollouts)

    def accuracy_by_searches(self) -> list[tuple[int, int, int]]:
        """(searches, rollouts of known correctness, correct ones), by number of searches."""
        return [(k, v[0], v[1]) for k, v in sorted(self.by_searches.items())]

    def to_json(self) -> dict[str, Any]:
        return {
            "correct_by": self.correct_by, "budget": self.budget,
            "stages": [{"stage": name, "count": count, "of_rollouts": self.share(count)}
                       for name, count in self.stages()],
            "unknown": self.unknown, "judge_failed": self.judge_failed, "held_back": self.held_back,
            "downsampled": self.downsampled,
            "accuracy_by_searches": [{"searches": k, "rollouts": n, "correct": c,
                                      "accuracy": round(c / n, 4) if n else None}
                                     for k, n, c in self.accuracy_by_searches()],
        }

    @classmethod
    def from_json(cls, d: Any) -> Funnel:
        """A funnel as a file's record stores it."""
        try:
            counts = {s["stage"]: int(s["count"]) for s in d["stages"] if s["stage"] in STAGES}
            return cls(correct_by=str(d.get("correct_by", "exact match")), budget=d.get("budget"), **counts,
                       unknown=int(d.get("unknown", 0)), judge_failed=int(d.get("judge_failed", 0)),
                       held_back=int(d.get("held_back", 0)), downsampled=int(d.get("downsampled", 0)),
                       by_searches={int(a["searches"]): [int(a["rollouts"]), int(a["correct"])]
                                    for a in d.get("accuracy_by_searches", ())})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"record.funnel is not what this version reads ({e})") from None


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


_LABELS = {"questions": "questions", "skipped": "skipped (blank)", "rollouts": "rollouts",
           "failed": "failed", "answered": "answered", "correct": "correct", "clean": "clean (no quality flag)",
           "within_budget": "within the token budget", "selected": "selected (rows written)"}


def stage_label(stage: str, funnel: Funnel) -> str:
    """A stage's name as the summary and the report show it."""
    label = _LABELS[stage]
    if stage == "correct":
        label += f" (by {funnel.correct_by})"
    if stage == "within_budget":
        label += f" (<= {funnel.budget} tokens)" if funnel.budget else " (no --max-length)"
    return label


def funnel_lines(funnel: Funnel) -> list[str]:
    """The funnel as text lines (the summary prints them; the card renders its own table)."""
    out = []
    for stage, count in funnel.stages():
        label = stage_label(stage, funnel)
        share = funnel.share(count)
        shown = f"{100 * share:.1f}%" if stage not in ("questions", "skipped") and share is not None else ""
        out.append(f"{label:<48} {count:>8,}  {shown:>6}")
    searches = ", ".join(f"{k}: {c}/{n}" for k, n, c in funnel.accuracy_by_searches())
    if searches:
        out.append(f"accuracy by searches (correct/rollouts): {searches}")
    if funnel.judge_failed:
        out.append(f"unjudged (the judge failed; judge_correct null, rerun to ask again): {funnel.judge_failed:,}")
    return out


_CARD_STAGES = {"questions": "questions in the input", "skipped": "skipped (blank question)", "rollouts": "rollouts",
                "failed": "failed (not in the data)", "answered": "answered (ended with `<answer>`)",
                "correct": "correct", "clean": "clean (correct, no quality flag)",
                "within_budget": "within the token budget", "selected": "selected (the rows of this dataset)"}


def funnel_context(funnel: Funnel | None, curation: Mapping[str, Any]) -> dict[str, Any]:
    """The values of the card's Curation section (`funnel` None for a file written before there was one);
    `curation` is the record's curation options."""
    if funnel is None:
        return {"funnel": None}
    stages = []
    for stage, count in funnel.stages():
        label = _CARD_STAGES[stage]
        if stage == "within_budget":
            label += f" (≤ {funnel.budget:,} tokens)" if funnel.budget else " (no budget set)"
        share = funnel.share(count)
        shown = "" if stage in ("questions", "skipped") or share is None else f"{100 * share:.1f}%"
        stages.append({"label": label, "count": count, "share": shown})
    searches = [{"searches": k, "rollouts": n, "correct": c, "accuracy": f"{c / n:.3f}" if n else "-"}
                for k, n, c in funnel.accuracy_by_searches()]
    return {"funnel": stages, "correct_by": funnel.correct_by, "by_searches": searches,
            "judge_failed": funnel.judge_failed, "unknown": funnel.unknown,
            "curation": [(k, v) for k, v in curation.items() if v not in (None, False)]}
