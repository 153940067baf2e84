"""The record of one finished rollout, as the journal keeps it: what the rollout produced, and the
judge's verdict on it when a judge gave one.

A `RolloutResult` is independent of the input row it came from (the question's golden answers
and extra_info join it when the output row is shaped, see `core.rows`), so a journal can be read
back against a grown or reordered input. `from_json` validates a stored result where it enters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from hfdistill.core.types import Trajectory, Usage

__all__ = ["RolloutResult", "Verdict"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """One judgement: correct or not, the judge's reasoning, the model that gave it, and `spec`, which
    judge it was (a digest of its prompt and the model asked for): a verdict counts only for the same spec."""

    correct: bool
    rationale: str
    model: str | None
    spec: str

    def to_json(self) -> dict[str, Any]:
        return {"correct": self.correct, "rationale": self.rationale, "model": self.model, "spec": self.spec}

    @classmethod
    def from_json(cls, d: Any) -> Verdict | None:
        """The stored verdict, or None when what is stored is not one (it is then asked for again)."""
        if not isinstance(d, Mapping) or not isinstance(d.get("correct"), bool) or not isinstance(d.get("spec"), str):
            return None
        model = d.get("model")
        return cls(d["correct"], str(d.get("rationale") or ""), model if isinstance(model, str) else None, d["spec"])


@dataclass(frozen=True, slots=True)
class RolloutResult:
    """What a finished rollout produced. `messages` are the stored conversation in verl's shape (the
    output's own format, `core.types.Message.to_dict`)."""

    messages: list[dict[str, Any]]
    stop_reason: str
    assistant_turns: int
    num_tool_calls: int
    num_tool_errors: int
    num_queries: int
    num_malformed_calls: int | None  # None in results journaled before such calls were counted
    usage: Usage
    prediction: str
    verdict: Verdict | None = None
    tool_calls_by_name: dict[str, int] | None = None  # None in results journaled when search was the only tool

    @classmethod
    def of(cls, traj: Trajectory) -> RolloutResult:
        return cls([m.to_dict() for m in traj.messages], traj.stop_reason, traj.assistant_turns, traj.num_tool_calls,
                   traj.num_tool_errors, traj.num_queries, traj.num_malformed_calls,
                   Usage(traj.usage.prompt_tokens, traj.usage.completion_tokens), traj.prediction,
                   tool_calls_by_name=dict(traj.tool_calls_by_name))

    def calls_by_name(self) -> dict[str, int]:
        """The calls run, by tool (they sum to `num_tool_calls`); a result from before other tools were
        counted made only searches."""
        if self.tool_calls_by_name is not None:
            return self.tool_calls_by_name
        return {"search": self.num_tool_calls} if self.num_tool_calls else {}

    def judged(self, verdict: Verdict) -> RolloutResult:
        """This result with `verdict` in place of any earlier one."""
        return replace(self, verdict=verdict)

    def verdict_of(self, spec: str | None) -> Verdict | None:
        """The stored verdict if the judge `spec` gave it (None: no judge asked, none stored, or another's)."""
        return self.verdict if spec is not None and self.verdict is not None and self.verdict.spec == spec else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "messages": self.messages, "stop_reason": self.stop_reason, "assistant_turns": self.assistant_turns,
            "num_tool_calls": self.num_tool_calls, "num_tool_errors": self.num_tool_errors,
            "num_queries": self.num_queries, "usage": self.usage.to_dict(), "prediction": self.prediction}
        if self.num_malformed_calls is not None:
            out["num_malformed_calls"] = self.num_malformed_calls
        if self.tool_calls_by_name is not None:
            out["tool_calls_by_name"] = self.tool_calls_by_name
        if self.verdict is not None:
            out["judge"] = self.verdict.to_json()
        return out

    @classmethod
    def from_json(cls, d: Any) -> RolloutResult:
        """A stored result, validated; ValueError names the field that is missing or of another type."""
        if not isinstance(d, Mapping):
            raise ValueError("a rollout result is not a JSON object")
        usage = _field(d, "usage", Mapping)
        return cls(_field(d, "messages", list), _field(d, "stop_reason", str), _field(d, "assistant_turns", int),
                   _field(d, "num_tool_calls", int), _field(d, "num_tool_errors", int), _field(d, "num_queries", int),
                   _field(d, "num_malformed_calls", int, None),
                   Usage(_field(usage, "prompt_tokens", int), _field(usage, "completion_tokens", int)),
                   _field(d, "prediction", str), Verdict.from_json(d.get("judge")),
                   _calls_by_name(d.get("tool_calls_by_name")))


def _calls_by_name(value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and type(v) is int for k, v in value.items()):
        raise ValueError("field 'tool_calls_by_name' is not an object of counts")
    return dict(value)


_REQUIRED = object()


def _field(d: Mapping[str, Any], name: str, kind: type, default: Any = _REQUIRED) -> Any:
    value = d.get(name, default)
    if value is None and default is None:
        return None
    if value is _REQUIRED or not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"field {name!r} is not a {kind.__name__}")
    return value
