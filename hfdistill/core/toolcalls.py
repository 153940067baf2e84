"""Pure parsing of what the teacher wrote: thinking, `<tool_call>` blocks, answers, search arguments.

Lenient on purpose: Tongyi-style models emit JSON with trailing commas, single quotes or a
missing closing tag at the end of output, and vLLM's hermes parser leaves such calls in `content`.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hfdistill.core.tools import Tool, ToolArgumentError
from hfdistill.core.types import ToolCall

__all__ = [
    "CallError",
    "ParsedTurn",
    "ToolRequest",
    "extract_answer",
    "interpret_turn",
    "parse_tool_call_blocks",
    "split_thinking",
]

_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_TRAILING_COMMA_RE = re.compile(r",\s*([}\]])")


@dataclass(frozen=True, slots=True)
class ToolRequest:
    """A call to run: its id, the tool's name and its arguments as the tool normalised them."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallError:
    """A call the model got wrong; `message` becomes the observation it sees next."""

    id: str
    name: str
    arguments: str
    message: str


@dataclass(frozen=True, slots=True)
class ParsedTurn:
    """An assistant turn split into what is stored and what is executed."""

    content: str  # visible text with thinking and tool-call blocks removed
    text: str  # visible text with tool-call blocks kept: what is stored when a call is malformed
    reasoning: str | None
    answer: str | None  # text of the last <answer>…</answer>, or None
    calls: tuple[ToolRequest | CallError, ...]


def split_thinking(content: str, reasoning: str | None) -> tuple[str, str | None]:
    """Separate `<think>` text from visible content; server-side reasoning wins when present.

    A bare `</think>` with no opening tag means the chat template opened the block in the prompt; an
    opening tag with no closing one means the turn was cut inside its thinking.
    """
    thoughts = []
    if "</think>" in content and "<think>" not in content.split("</think>", 1)[0]:
        head, content = content.split("</think>", 1)
        thoughts.append(head)
    content = _closed_blocks_out(content, thoughts)
    if "<think>" in content:
        # An unclosed block: the turn was cut (max_tokens) inside its thinking. What follows the tag
        # is thinking, never visible content (verl trains on content, and must not see a stray tag).
        content, cut = content.split("<think>", 1)
        thoughts.append(cut)
    inline = "\n\n".join(t.strip() for t in thoughts if t.strip()) or None
    if reasoning is not None and reasoning.strip():
        return content.strip(), reasoning.strip()
    return content.strip(), inline


def _closed_blocks_out(content: str, thoughts: list[str]) -> str:
    """`content` without its `<think>…</think>` blocks, whose insides are appended to `thoughts`.

    With `str.find`, not a lazy regex: `.*?` tests for the closing tag at every character, which cost
    80 µs on a 4 kB turn, and a real teacher thinks for tens of kB.
    """
    kept, rest = [], content
    while (start := rest.find("<think>")) >= 0 and (end := rest.find("</think>", start + len("<think>"))) >= 0:
        kept.append(rest[:start])
        thoughts.append(rest[start + len("<think>"):end])
        rest = rest[end + len("</think>"):]
    kept.append(rest)
    return "".join(kept)


def extract_answer(text: str) -> str | None:
    """The last `<answer>…</answer>` in `text`, stripped; None when there is none."""
    found = _ANSWER_RE.findall(text)
    return found[-1].strip() if found else None


def parse_tool_call_blocks(content: str) -> tuple[str, list[tuple[str, dict[str, Any] | str]]]:
    """Find `<tool_call>` blocks; return the content without them and, per block, name+args or an error."""
    blocks = _TOOL_CALL_RE.findall(content)
    remaining = _TOOL_CALL_RE.sub("", content).strip()
    parsed: list[tuple[str, dict[str, Any] | str]] = []
    for block in blocks:
        obj = _lenient_json(block.strip())
        if not isinstance(obj, dict):
            parsed.append(("", f"could not parse the tool call as JSON: {block.strip()[:200]!r}"))
            continue
        name = obj.get("name")
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            args = _lenient_json(args)
        if not isinstance(name, str) or not isinstance(args, dict):
            parsed.append((name if isinstance(name, str) else "", "a tool call needs a string \"name\" "
                           "and an object \"arguments\""))
            continue
        parsed.append((name, args))
    return remaining, parsed


def _lenient_json(text: str) -> Any:
    """json.loads, then with trailing commas removed, then as a Python literal (single quotes)."""
    for candidate in (text, _TRAILING_COMMA_RE.sub(r"\1", text)):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    try:
        return ast.literal_eval(_TRAILING_COMMA_RE.sub(r"\1", text))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def interpret_turn(
    content: str,
    reasoning: str | None,
    native_calls: Sequence[ToolCall],
    *,
    tools: Mapping[str, Tool],
    call_id: str,
) -> ParsedTurn:
    """Turn one teacher reply into stored content plus at most one call to run.

    Several calls of one tool in a turn are folded into one (a search's queries concatenated), so
    every stored assistant turn has one call and one tool message, as verl's per-message rendering
    needs; calls of other tools in the same turn are not run (as the model's authors run the first).
    """
    text, thinking = split_thinking(content, reasoning)
    visible, text_calls = parse_tool_call_blocks(text)
    candidates: list[tuple[str, dict[str, Any] | str]] = []
    for call in native_calls:
        args = _lenient_json(call.arguments) if call.arguments.strip() else {}
        candidates.append((call.name, args if isinstance(args, dict) else
                           f"the arguments are not a JSON object: {call.arguments[:200]!r}"))
    if not native_calls:
        candidates = text_calls
    first_id = native_calls[0].id if native_calls and native_calls[0].id else call_id
    calls = _fold_calls(candidates, tools=tools, call_id=first_id)
    return ParsedTurn(content=visible, text=text, reasoning=thinking, answer=extract_answer(visible),
                      calls=calls)


def _fold_calls(candidates: list[tuple[str, dict[str, Any] | str]], *, tools: Mapping[str, Tool],
                call_id: str) -> tuple[ToolRequest | CallError, ...]:
    if not candidates:
        return ()
    valid: dict[str, list[dict[str, Any]]] = {}
    errors: list[str] = []
    for name, args in candidates:
        if isinstance(args, str):
            errors.append(args)
        elif name not in tools:
            errors.append(f"unknown tool {name!r}; the tools are {', '.join(map(repr, tools))}")
        else:
            try:
                normalised = tools[name].arguments(args)
            except ToolArgumentError as e:
                errors.append(str(e))
                continue
            valid.setdefault(name, []).append(normalised)
    if valid:
        name, calls = next(iter(valid.items()))
        return (ToolRequest(id=call_id, name=name, arguments=tools[name].fold(calls)),)
    name, args = candidates[0]
    arguments = json.dumps(args, ensure_ascii=False) if isinstance(args, dict) else ""
    return (CallError(id=call_id, name=name, arguments=arguments, message="; ".join(errors)),)
