"""The rollout loop: teacher turn, tool call, observation, until an answer or a limit.

It receives the teacher and the retriever as two awaitables and builds no client, so it runs the
same against vLLM, a scripted fake or anything else. The model's mistakes are observations it
sees; broken infrastructure raises (and the row goes to the failures file).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hfdistill.errors import ContextLengthError, RetrievalError, RolloutError, TeacherError
from hfdistill.prompts import TOOL_NAME, Prompts
from hfdistill.toolcalls import CallError, ParsedTurn, SearchCall, extract_answer, interpret_turn
from hfdistill.types import Document, Message, TeacherReply, ToolCall, Trajectory

__all__ = ["ChatFn", "RolloutSpec", "SearchFn", "rollout"]

ChatFn = Callable[[list[dict[str, Any]]], Awaitable[TeacherReply]]
SearchFn = Callable[[Sequence[str]], Awaitable[list[list[Document]]]]


@dataclass(frozen=True)
class RolloutSpec:
    """What is constant across the rollouts of a run."""

    prompts: Prompts
    max_turns: int
    text_protocol: bool


async def rollout(question: str, golden_answers: Sequence[str], *, chat: ChatFn, search: SearchFn,
                  spec: RolloutSpec) -> Trajectory:
    """Run one conversation to its end and return it with its stop reason and counters."""
    user = spec.prompts.user(question, golden_answers)
    traj = Trajectory(messages=[Message("system", spec.prompts.system), Message("user", user)],
                      stop_reason="max_turns")
    wire: list[dict[str, Any]] = [
        {"role": "system", "content": spec.prompts.system_on_wire(spec.text_protocol)},
        {"role": "user", "content": user},
    ]
    for turn in range(1, spec.max_turns + 1):
        try:
            reply = await chat(wire)
        except ContextLengthError:
            traj.stop_reason = "context"
            break
        except TeacherError as e:
            raise RolloutError(str(e), cause=e.cause, turn=turn) from e
        traj.usage.add(reply.usage)
        traj.assistant_turns += 1
        parsed = interpret_turn(reply.content, reply.reasoning, reply.tool_calls, tool_name=TOOL_NAME,
                                call_id=f"call_{turn}")
        stop = _stop_reason(reply, parsed)
        if stop is not None:
            content = parsed.text if stop in ("length", "context") else parsed.content
            traj.messages.append(Message("assistant", content, parsed.reasoning))
            traj.stop_reason = stop
            break
        try:
            await _act(parsed.calls[0], reply, parsed, traj, wire, search, spec)
        except RetrievalError as e:
            raise RolloutError(str(e), cause=e.cause, turn=turn) from e
    final = next((m for m in reversed(traj.messages) if m.role == "assistant"), None)
    traj.prediction = (extract_answer(final.content) or "") if final is not None else ""
    return traj


def _stop_reason(reply: TeacherReply, parsed: ParsedTurn) -> str | None:
    if reply.finish_reason == "length":
        return "context" if reply.context_full else "length"
    if parsed.answer is not None:
        return "answer"
    if not parsed.calls:
        return "no_tool_call"
    return None


async def _act(call: SearchCall | CallError, reply: TeacherReply, parsed: ParsedTurn, traj: Trajectory,
               wire: list[dict[str, Any]], search: SearchFn, spec: RolloutSpec) -> None:
    """Execute the turn's call (or report its error) and append both sides to both transcripts."""
    prompts = spec.prompts
    if isinstance(call, SearchCall):
        documents = await search(call.queries)
        observation = prompts.observation(call.queries, documents)
        stored_call: ToolCall | None = ToolCall(call.id, TOOL_NAME,
                                                json.dumps({prompts.query_arg: list(call.queries)},
                                                           ensure_ascii=False))
        traj.num_tool_calls += 1
        traj.num_queries += len(call.queries)
    else:
        observation = prompts.error(call.message)
        # A call that is not even JSON cannot be stored as a call; the text shows what was written.
        stored_call = ToolCall(call.id, call.name, call.arguments) if call.arguments else None
        traj.num_tool_errors += 1
    content = parsed.content if stored_call is not None else parsed.text
    traj.messages.append(Message("assistant", content, parsed.reasoning,
                                 tool_calls=(stored_call,) if stored_call else ()))
    traj.messages.append(Message("tool", observation, tool_call_id=stored_call.id if stored_call else None,
                                 name=stored_call.name if stored_call else TOOL_NAME))
    wire.extend(_wire_turn(reply, stored_call, observation, spec.text_protocol))


def _wire_turn(reply: TeacherReply, call: ToolCall | None, observation: str,
               text_protocol: bool) -> list[dict[str, Any]]:
    """The turn as the server should see it next time: what the model wrote, as far as the protocol allows.

    The teacher then reasons from the context it generated, and vLLM's prefix cache serves the turn.
    """
    result = f"<tool_response>\n{observation}\n</tool_response>"
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
