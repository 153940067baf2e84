"""Quality flags of one trajectory: pure functions of its stored messages and counts.

Each flag names a reason a rollout may not be worth training on, after the filters peers apply
(SimpleDeepSearcher's format and reasoning checks, NeMo's dropped truncations; docs/curation.md). Flags are
computed when a file is written, never journaled, so a new word budget needs no teacher call.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hfdistill.core.rows import MALFORMED_CALL  # the kind of tool_error that is not even JSON (held back by default)

__all__ = [
    "DEFAULT_MAX_STEP_WORDS",
    "EMPTY_OBSERVATION",
    "FLAGS",
    "LENGTH",
    "LONG_REASONING",
    "MALFORMED_CALL",
    "MALFORMED_TAGS",
    "NO_ANSWER",
    "REPETITION",
    "TOOL_ERROR",
    "UNCLOSED_THINK",
    "quality_flags",
]

LENGTH = "length"  # cut off: a reply hit max_tokens, or the conversation outgrew the context
NO_ANSWER = "no_answer"  # no <answer> in the final assistant message
TOOL_ERROR = "tool_error"  # the model called an unknown tool, without a query, or wrote a non-JSON call
UNCLOSED_THINK = "unclosed_think"  # a <think> that is never closed
MALFORMED_TAGS = "malformed_tags"  # unbalanced <answer>/<tool_call>/</think>, several answers, a forged observation
REPETITION = "repetition"  # repeated word n-grams, a runaway of "wait"/"hmm", or the same search twice
LONG_REASONING = "long_reasoning"  # a step's reasoning longer than the word budget
EMPTY_OBSERVATION = "empty_observation"  # a search that returned nothing
FLAGS = (LENGTH, NO_ANSWER, TOOL_ERROR, MALFORMED_CALL, UNCLOSED_THINK, MALFORMED_TAGS, REPETITION,
         LONG_REASONING, EMPTY_OBSERVATION)

# SimpleDeepSearcher keeps a step under 300 words and at most 3 hesitations.
DEFAULT_MAX_STEP_WORDS = 300
_MAX_HESITATIONS = 3
_NGRAM, _NGRAM_REPEATS = 6, 3  # a 6-word phrase three times in one step reads as a loop
_HESITATION = re.compile(r"\b(wait|hmm+|alternatively)\b")  # in lower-cased text
_HESITATION_WORDS = ("wait", "hmm", "alternatively")
_WORD = re.compile(r"\w+")
# In ASCII text a word character is [A-Za-z0-9_]; everything else becomes a space.
_ASCII_NON_WORD = bytes(c for c in range(128) if not (chr(c).isalnum() or chr(c) == "_"))
_BLANK_NON_WORD = bytes.maketrans(_ASCII_NON_WORD, b" " * len(_ASCII_NON_WORD))
_TAGS = ("answer", "tool_call")
_ERROR_PREFIX = "Error:"


def quality_flags(messages: Sequence[Mapping[str, Any]], *, stop_reason: str, prediction: str,
                  num_tool_errors: int, num_malformed_calls: int | None,
                  max_step_words: int = DEFAULT_MAX_STEP_WORDS) -> list[str]:
    """Every flag that applies to a rollout (its stored messages and counts), in the order of `FLAGS`.

    `num_malformed_calls` is None where it was not counted (an output row): the messages tell then.
    """
    assistant = [m for m in messages if m.get("role") == "assistant"]
    malformed = bool(num_malformed_calls) if num_malformed_calls is not None else _malformed_in(messages)
    found = {
        LENGTH: stop_reason in ("length", "context"),
        NO_ANSWER: not prediction,
        TOOL_ERROR: bool(num_tool_errors) or malformed,
        MALFORMED_CALL: malformed,
        UNCLOSED_THINK: any(_unclosed_think(m) for m in assistant),
        MALFORMED_TAGS: _malformed_tags(assistant),
        REPETITION: any(_repetitive(_step_text(m)) for m in assistant) or _repeated_search(assistant),
        LONG_REASONING: any(_more_words(_reasoning(m), max_step_words) for m in assistant),
        EMPTY_OBSERVATION: any(_empty_observation(m) for m in messages if m.get("role") == "tool"),
    }
    return [flag for flag in FLAGS if found[flag]]


def _malformed_in(messages: Sequence[Mapping[str, Any]]) -> bool:
    """A call that was not even JSON: its error came back as a `user` turn in the model's own format
    (see `core.rollout`), the only user turn after the question."""
    users = [m for m in messages if m.get("role") == "user"]
    return any(str(m.get("content") or "").startswith("<tool_response>") for m in users[1:])


def _text(m: Mapping[str, Any]) -> str:
    return str(m.get("content") or "")


def _reasoning(m: Mapping[str, Any]) -> str:
    """The step's thinking: `reasoning_content`, or a <think> block left inline in the content."""
    if m.get("reasoning_content"):
        return str(m["reasoning_content"])
    text = _text(m)
    start = text.find("<think>")
    if start < 0:
        return ""
    start += len("<think>")
    end = text.find("</think>", start)
    return text[start:] if end < 0 else text[start:end]


def _step_text(m: Mapping[str, Any]) -> str:
    return f"{m.get('reasoning_content') or ''}\n{_text(m)}"


def _words(text: str) -> list[str]:
    """The `\\w+` runs of `text`. ASCII text (nearly every step) goes through `bytes.translate`, five
    times faster than `re`, which made the flags the costliest part of writing the output."""
    if text.isascii():
        return text.encode().translate(_BLANK_NON_WORD).decode().split()
    return _WORD.findall(text)


def _more_words(text: str, limit: int) -> bool:
    """Whether `text` has more than `limit` words (words are separated: a text shorter than twice the
    limit has not, and is not tokenised)."""
    return (len(text) + 1) // 2 > limit and len(_words(text)) > limit


def _unclosed_think(m: Mapping[str, Any]) -> bool:
    return any(t.count("<think>") > t.count("</think>") for t in (_text(m), str(m.get("reasoning_content") or "")))


def _malformed_tags(assistant: Sequence[Mapping[str, Any]]) -> bool:
    for m in assistant:
        text = _text(m)
        if text.count("</think>") > text.count("<think>") or "<tool_response>" in text:
            return True  # a stray close, or an observation the model wrote itself
        if any(text.count(f"<{tag}>") != text.count(f"</{tag}>") for tag in _TAGS) or text.count("<answer>") > 1:
            return True
    return any("<answer>" in _text(m) for m in assistant[:-1])  # answered, then went on


def _repetitive(text: str) -> bool:
    text = text.lower()
    # Every hesitation holds one of these words, so when they occur few times there are few hesitations.
    if sum(map(text.count, _HESITATION_WORDS)) > _MAX_HESITATIONS and \
            len(_HESITATION.findall(text)) > _MAX_HESITATIONS:
        return True
    words = _words(text)
    # every run of _NGRAM consecutive words (the shifted copies are shorter: zip stops at the last full run)
    grams = Counter(zip(*(words[i:] for i in range(_NGRAM)), strict=False))
    return bool(grams) and max(grams.values()) >= _NGRAM_REPEATS


def _repeated_search(assistant: Iterable[Mapping[str, Any]]) -> bool:
    seen: set[str] = set()
    for m in assistant:
        for call in m.get("tool_calls") or ():
            arguments = call["function"]["arguments"]
            if arguments in seen:
                return True
            seen.add(arguments)
    return False


def _empty_observation(m: Mapping[str, Any]) -> bool:
    """Recognises both built-in observation formats: `(no results)` (seed) and an empty verl result."""
    text = _text(m).strip()
    if not text or "\n(no results)" in f"\n{text}":
        return True
    if text.startswith(_ERROR_PREFIX) or not text.startswith("{"):
        return False
    try:
        result = json.loads(text).get("result")
    except (ValueError, AttributeError):
        return False
    return isinstance(result, str) and any(not part.strip() for part in result.split("\n---\n"))
