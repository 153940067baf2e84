"""Plain values shared by every layer: messages, tool calls, documents, teacher replies, trajectories."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ANSWERED",
    "Document",
    "Message",
    "RolloutJob",
    "StopRequest",
    "TeacherReply",
    "ToolCall",
    "Trajectory",
    "Usage",
]

# The stop reasons of a conversation that ended with an answer: the model's own, or the one it was asked
# for at the context limit.
ANSWERED = ("answer", "forced_answer")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call of an assistant turn; `arguments` is a JSON string (verl and the Hub need that)."""

    id: str
    name: str
    arguments: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True, slots=True)
class Message:
    """A chat message in the stored (verl / OpenAI) shape."""

    role: str
    content: str
    reasoning_content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every key on every message, so parquet infers one struct type for the column."""
        return {
            "role": self.role,
            "content": self.content,
            "reasoning_content": self.reasoning_content,
            "tool_calls": [c.to_dict() for c in self.tool_calls] if self.tool_calls else None,
            "tool_call_id": self.tool_call_id,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        """The inverse of `to_dict` (for conversations read back from the journal)."""
        calls = tuple(ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
                      for c in d.get("tool_calls") or ())
        return cls(d["role"], d["content"], d.get("reasoning_content"), calls, d.get("tool_call_id"), d.get("name"))


@dataclass(frozen=True, slots=True)
class Document:
    """A retrieved passage in the Search-R1 shape; `contents` is `"Title"\\ntext` as the corpus stores it."""

    id: str
    title: str
    text: str
    contents: str
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "text": self.text, "contents": self.contents,
                "score": self.score}


@dataclass(slots=True)
class Usage:
    """Token counts summed over the teacher calls of a rollout."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


@dataclass(frozen=True, slots=True)
class TeacherReply:
    """One chat completion, reduced to what the rollout loop needs.

    `tool_calls` are the server-parsed calls (native protocol); `content` is the raw text, which
    may still hold `<think>` and `<tool_call>` blocks when the server did not parse them.
    """

    content: str
    reasoning: str | None
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str
    usage: Usage
    context_full: bool = False  # cut because prompt + output reached the model's context window


@dataclass(slots=True)
class Trajectory:
    """A finished rollout: the stored conversation plus why and how it ended."""

    messages: list[Message]
    stop_reason: str
    assistant_turns: int = 0
    num_tool_calls: int = 0
    num_tool_errors: int = 0
    num_queries: int = 0
    num_malformed_calls: int = 0  # calls that were not even JSON (their turn is flagged, see rows)
    usage: Usage = field(default_factory=Usage)
    prediction: str = ""
    tool_calls_by_name: dict[str, int] = field(default_factory=dict)  # the calls run, by tool


@dataclass(frozen=True, slots=True)
class RolloutJob:
    """One rollout to make: which input row (by position) and which of its rollouts, and what to ask."""

    input_index: int | None
    rollout_index: int
    question: str
    golden_answers: tuple[str, ...]
    extra_info: Any = None


@dataclass(slots=True)
class StopRequest:
    """Set by whoever owns the process's signals (the CLI): a run starts no new rollout once it is set. A stop
    that is no signal's (a teacher server hfdistill runs was given up) says why: the run ends with `reason`."""

    requested: bool = False
    reason: Exception | None = None

    def because(self, reason: Exception) -> None:
        self.reason = self.reason or reason
        self.requested = True
