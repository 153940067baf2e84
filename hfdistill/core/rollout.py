"""The rollout loop: teacher turn, tool call, observation, until an answer or a limit.

It receives the teacher as an awaitable and the tools' world as a `ToolContext` and builds no
client, so it runs the same against vLLM, a scripted fake or anything else; the tools themselves
(see `core.tools`) come with the prompts. The model's mistakes are observations it
sees; broken infrastructure raises (and the row goes to the failures file).

Every finished tool turn is a `TurnStep`: what it added to the stored conversation and to what the
teacher sees. The loop reports each one (`on_turn`), and continues from recorded steps
(`resume`), so a conversation cut off by a kill goes on from its last finished turn.

When the next turn would not fit the context budget, the teacher is asked for its final answer
instead (`RolloutSpec.force_answer`, as Tongyi-DeepResearch's own runner does): the conversation
ends as `forced_answer` rather than being lost as `context`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hfdistill.core.errors import ContextLengthError, RolloutError, ServiceError, TeacherError
from hfdistill.core.prompts import Prompts
from hfdistill.core.toolcalls import CallError, ParsedTurn, ToolRequest, extract_answer, interpret_turn
from hfdistill.core.tools import ToolContext
from hfdistill.core.types import Message, TeacherReply, ToolCall, Trajectory, Usage

__all__ = ["ChatFn", "RolloutSpec", "TurnStep", "estimated_tokens", "rollout", "tool_response"]

ChatFn = Callable[[list[dict[str, Any]]], Awaitable[TeacherReply]]


@dataclass(frozen=True)
class RolloutSpec:
    """What is constant across the rollouts of a run."""

    prompts: Prompts
    max_turns: int
    text_protocol: bool
    # Prompt tokens the next turn may use (the model's context less the turn's max_tokens); past it the
    # teacher is asked for its answer. None: no budget known, or --no-force-answer.
    context_budget: int | None = None


@dataclass(frozen=True)
class TurnStep:
    """What one finished tool turn added: enough to continue the conversation after a kill."""

    stored: tuple[Message, ...]  # to the stored conversation
    wire: tuple[dict[str, Any], ...]  # to what the teacher sees next
    usage: Usage = field(default_factory=Usage)
    tool_calls: int = 0
    tool_errors: int = 0
    malformed_calls: int = 0
    queries: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"stored": [m.to_dict() for m in self.stored], "wire": list(self.wire), "usage": self.usage.to_dict(),
                "tool_calls": self.tool_calls, "tool_errors": self.tool_errors,
                "malformed_calls": self.malformed_calls, "queries": self.queries}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TurnStep:
        """Read back a recorded step; KeyError/TypeError/ValueError when it is not one."""
        return cls(stored=tuple(Message.from_dict(m) for m in d["stored"]), wire=tuple(d["wire"]),
                   usage=Usage(int(d["usage"]["prompt_tokens"]), int(d["usage"]["completion_tokens"])),
                   tool_calls=int(d["tool_calls"]), tool_errors=int(d["tool_errors"]),
                   malformed_calls=int(d["malformed_calls"]), queries=int(d["queries"]))


def tool_response(observation: str) -> str:
    """A tool result in the model's own format: how Qwen templates render a `tool` message."""
    return f"<tool_response>\n{observation}\n</tool_response>"


async def rollout(question: str, golden_answers: Sequence[str], *, chat: ChatFn, tools: ToolContext,
                  spec: RolloutSpec, resume: Sequence[TurnStep] = (),
                  on_turn: Callable[[TurnStep], None] | None = None) -> Trajectory:
    """Run one conversation to its end (continuing after the `resume` steps) and return it."""
    user = spec.prompts.user(question, golden_answers)
    traj = Trajectory(messages=[Message("system", spec.prompts.system), Message("user", user)],
                      stop_reason="max_turns")
    wire: list[dict[str, Any]] = [
        {"role": "system", "content": spec.prompts.system_on_wire(spec.text_protocol)},
        {"role": "user", "content": user},
    ]
    used = 0  # tokens of the conversation after the last reply: its prompt and what it generated
    for step in resume:
        _apply(step, traj, wire)
        used = step.usage.prompt_tokens + step.usage.completion_tokens
    for turn in range(len(resume) + 1, spec.max_turns + 1):
        if turn > 1 and spec.context_budget is not None and used + estimated_tokens(wire[-1]) > spec.context_budget:
            await _forced_answer(traj, wire, chat, spec, turn, used)
            break
        answered = await _teacher_turn(chat, wire, spec, turn)
        if answered is None:
            traj.stop_reason = "context"
            break
        reply, parsed = answered
        stop = _stop_reason(reply, parsed)
        if stop is not None:
            _finish(traj, reply, parsed, stop)
            break
        try:
            step = await _act(parsed.calls[0], reply, parsed, tools, spec)
        except ServiceError as e:  # a tool's server (the retriever, an MCP server) failed for good
            raise RolloutError(str(e), cause=e.cause, turn=turn) from e
        _apply(step, traj, wire)
        used = reply.usage.prompt_tokens + reply.usage.completion_tokens
        if on_turn is not None:
            on_turn(step)
    final = next((m for m in reversed(traj.messages) if m.role == "assistant"), None)
    traj.prediction = (extract_answer(final.content) or "") if final is not None else ""
    return traj


async def _teacher_turn(chat: ChatFn, wire: list[dict[str, Any]], spec: RolloutSpec,
                        turn: int) -> tuple[TeacherReply, ParsedTurn] | None:
    """The teacher's next turn and what it wrote, read; None when the conversation no longer fits its
    context. A teacher that failed for good fails the rollout at this turn."""
    try:
        reply = await chat(wire)
    except ContextLengthError:
        return None
    except TeacherError as e:
        raise RolloutError(str(e), cause=e.cause, turn=turn) from e
    return reply, interpret_turn(reply.content, reply.reasoning, reply.tool_calls, tools=spec.prompts.toolset,
                                 call_id=f"call_{turn}")


def estimated_tokens(message: dict[str, Any]) -> int:
    """An upper estimate of the tokens a message adds to the prompt, without the model's tokenizer.

    Qwen's tokenizer averages about four bytes of English per token; three errs on the side of asking
    for the answer a little early rather than having the server refuse the prompt. The constant covers
    the chat template's markers around the message.
    """
    return len(str(message.get("content") or "").encode()) // 3 + 16


async def _forced_answer(traj: Trajectory, wire: list[dict[str, Any]], chat: ChatFn, spec: RolloutSpec,
                         turn: int, used: int) -> None:
    """Ask for the final answer now. The conversation ends `forced_answer` when the reply gives one, else
    as it would have without the request: `context` (or `length` when the reply was cut by max_tokens).

    The last observation, which made the conversation too long, is cut so that the request fits the
    budget: sent whole, it would make the server refuse the request or cut the answer.
    """
    ask = spec.prompts.force_answer
    assert spec.context_budget is not None  # (the loop forces only within a budget)
    room = spec.context_budget - used - estimated_tokens({"content": ask})
    if estimated_tokens(wire[-1]) > room:
        _cut_observation(traj, wire, room)
    traj.messages.append(Message("user", ask))
    wire.append({"role": "user", "content": ask})
    answered = await _teacher_turn(chat, wire, spec, turn)
    if answered is None:
        traj.stop_reason = "context"
        return
    reply, parsed = answered
    stop = _stop_reason(reply, parsed)
    if stop == "answer":
        stop = "forced_answer"
    elif stop not in ("length", "context"):  # asked for its answer, it gave none: the context ran out all the same
        stop = "context"
    _finish(traj, reply, parsed, stop)


CUT_NOTE = "\n[… the rest of this result did not fit the context]"


def _cut_observation(traj: Trajectory, wire: list[dict[str, Any]], tokens: int) -> None:
    """Cut the last observation to about `tokens` (by `estimated_tokens`, so it errs short), alike in the
    stored conversation and on the wire, and say so in it."""
    stored = traj.messages[-1]
    wrapped = stored.content.startswith("<tool_response>\n")  # (the answer to a call that was not JSON)
    observation = stored.content.removeprefix("<tool_response>\n").removesuffix("\n</tool_response>") \
        if wrapped else stored.content
    keep = max(tokens - estimated_tokens({"content": CUT_NOTE}), 0) * 3
    cut = observation.encode()[:keep].decode(errors="ignore") + CUT_NOTE
    traj.messages[-1] = dataclasses.replace(stored, content=tool_response(cut) if wrapped else cut)
    on_wire = wire[-1]["content"]
    wire[-1] = {**wire[-1], "content": tool_response(cut) if on_wire.startswith("<tool_response>") else cut}


def _finish(traj: Trajectory, reply: TeacherReply, parsed: ParsedTurn, stop: str) -> None:
    """The last turn: stored as written when cut off (the text is all there is), else its visible content."""
    traj.usage.add(reply.usage)
    traj.assistant_turns += 1
    content = parsed.text if stop in ("length", "context") else parsed.content
    traj.messages.append(Message("assistant", content, parsed.reasoning))
    traj.stop_reason = stop


def _apply(step: TurnStep, traj: Trajectory, wire: list[dict[str, Any]]) -> None:
    traj.messages.extend(step.stored)
    wire.extend(step.wire)
    traj.usage.add(step.usage)
    traj.assistant_turns += 1
    traj.num_tool_calls += step.tool_calls
    if step.tool_calls:  # (a call that ran is stored as the turn's one call, under its tool's name)
        name = step.stored[0].tool_calls[0].name
        traj.tool_calls_by_name[name] = traj.tool_calls_by_name.get(name, 0) + 1
    traj.num_tool_errors += step.tool_errors
    traj.num_malformed_calls += step.malformed_calls
    traj.num_queries += step.queries


def _stop_reason(reply: TeacherReply, parsed: ParsedTurn) -> str | None:
    if reply.finish_reason == "length":
        return "context" if reply.context_full else "length"
    if parsed.answer is not None:
        return "answer"
    if not parsed.calls:
        return "no_tool_call"
    return None


async def _act(call: ToolRequest | CallError, reply: TeacherReply, parsed: ParsedTurn, tools: ToolContext,
               spec: RolloutSpec) -> TurnStep:
    """Run the turn's call (or report its error): both sides of the turn, stored and on the wire."""
    if isinstance(call, ToolRequest):
        output = await spec.prompts.toolset[call.name](call.arguments, tools)
        observation = output.observation
        stored_call: ToolCall | None = ToolCall(call.id, call.name, json.dumps(call.arguments, ensure_ascii=False))
        counts = {"tool_calls": 1, "queries": output.queries, "tool_errors": int(output.error)}
    else:
        observation = spec.prompts.error(call.message, call.name)
        stored_call = ToolCall(call.id, call.name, call.arguments) if call.arguments else None
        counts = {"tool_errors": 1, "malformed_calls": int(stored_call is None)}
    if stored_call is not None:
        stored = (Message("assistant", parsed.content, parsed.reasoning, tool_calls=(stored_call,)),
                  Message("tool", observation, tool_call_id=stored_call.id, name=stored_call.name))
    else:
        # A call that is not even JSON cannot be stored as a call, and a tool message must answer one:
        # the text stays as written and the error comes back as the user turn a Qwen template would
        # render for a tool message. The row is flagged (see `curation.flags`).
        stored = (Message("assistant", parsed.text, parsed.reasoning),
                  Message("user", tool_response(observation)))
    wire = _wire_turn(reply, stored_call, observation, spec.text_protocol)
    return TurnStep(stored, tuple(wire), reply.usage, **counts)


def _wire_turn(reply: TeacherReply, call: ToolCall | None, observation: str,
               text_protocol: bool) -> list[dict[str, Any]]:
    """The turn as the server should see it next time: what the model wrote, as far as the protocol allows.

    The teacher then reasons from the context it generated, and vLLM's prefix cache serves the turn.
    """
    result = tool_response(observation)
    if text_protocol or not reply.tool_calls:
        # Text protocol (or a call vLLM's parser left in the text): the model's own text, thinking and
        # <tool_call> included; the result goes back as Tongyi's ReAct loop sends it (the Qwen3 template
        # renders a tool message exactly so).
        assistant: dict[str, Any] = {"role": "assistant", "content": _as_written(reply)}
        return [assistant, {"role": "user", "content": result}]
    # The calls exactly as the server returned them (name, id, the arguments string), unless several
    # were folded into one search: one result cannot answer several calls, so the folded call goes back.
    calls = reply.tool_calls if len(reply.tool_calls) == 1 or call is None else (call,)
    assistant = {"role": "assistant", "content": reply.content, "tool_calls": [c.to_dict() for c in calls]}
    if reply.reasoning is not None:
        assistant["reasoning_content"] = reply.reasoning
    return [assistant, {"role": "tool", "tool_call_id": calls[0].id, "content": observation}]


def _as_written(reply: TeacherReply) -> str:
    """The completion's text as generated: a reasoning parser moves the `<think>` block out of `content`
    (vLLM keeps the newlines on both sides), so it is put back where the model wrote it."""
    if reply.reasoning is None:
        return reply.content
    return f"<think>{reply.reasoning}</think>{reply.content}"
