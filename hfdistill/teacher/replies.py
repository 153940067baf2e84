"""What a vLLM server answers, read where it enters: a chat completion validated field by field,
and the refusals (HTTP errors) whose meaning only the teacher knows, turned into the `TeacherError`
that says what to do. Pure: hfdistill/edge.py sends, and names every other fault."""

from __future__ import annotations

import re
from typing import Any

import orjson

from hfdistill.core.errors import ContextLengthError, ServiceError
from hfdistill.core.types import TeacherReply, ToolCall, Usage
from hfdistill.edge import Server, server_words

__all__ = ["model_ids", "refusal", "reply_of"]

# A prompt of exactly max-model-len tokens leaves no room for output: vLLM 0.32 answers
# "max_tokens must be at least 1, got 0" rather than its context-length message.
_CONTEXT_RE = re.compile(r"maximum context length|context length|context window|too long|max_model_len"
                         r"|max_tokens must be at least 1, got (?:0|-\d+)", re.IGNORECASE)
_TOOLS_REFUSED_RE = re.compile(r"tool.choice|enable-auto-tool-choice|tool-call-parser", re.IGNORECASE)
_PRIORITY_REFUSED_RE = re.compile(r"priority scheduling is not enabled", re.IGNORECASE)  # vLLM's fcfs policy


def refusal(server: Server, status: int, payload: bytes, retry_after: str | None) -> ServiceError | None:
    """The teacher's reading of an HTTP error, or None for the edge's (a 5xx, a 429, any other 4xx)."""
    if status not in (400, 401, 403, 404):
        return None
    message, url = server_words(payload), server.url
    if status == 400 and _CONTEXT_RE.search(message):
        return ContextLengthError(f"the conversation no longer fits the teacher's context: {message}")
    if status == 400 and _PRIORITY_REFUSED_RE.search(message):
        return server.fail("priority_refused", f"teacher {url} refuses request priorities ({message}); start vLLM "
                           "with --scheduling-policy priority, or pass --priority auto or off", transient=False)
    if status == 400 and _TOOLS_REFUSED_RE.search(message):
        return server.fail("tools_refused", f"teacher {url} refuses tools= ({message}); start vLLM with "
                           "--enable-auto-tool-choice --tool-call-parser hermes, or use --tool-call-mode text",
                           transient=False)
    if status in (401, 403):
        return server.fail(f"http_{status}", f"teacher {url} refused the API key (HTTP {status}: {message}); set "
                           "OPENAI_API_KEY or --api-key", transient=False)
    if status == 404:
        return server.fail("http_404", f"teacher {url} answered 404 ({message}); check that VLLM_URL ends in /v1 "
                           "and that --model names a served model", transient=False)
    return None


def model_ids(payload: bytes) -> dict[str, int | None]:
    """The ids of an OpenAI `GET /v1/models` answer, in order, each with the context window vLLM lists as
    `max_model_len` (None where the server lists none); ValueError when it is not such an answer."""
    try:
        return {str(m["id"]): m.get("max_model_len") if isinstance(m.get("max_model_len"), int) else None
                for m in orjson.loads(payload)["data"]}
    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"not an OpenAI model list ({type(e).__name__}: {e}); check the URL names the "
                         "server's /v1") from None


def reply_of(payload: bytes, max_tokens: int) -> TeacherReply:
    """A chat completion, validated where it enters; ValueError names what is missing or of another type
    (the edge makes that a transient `teacher_bad_response`, never an exception from deeper in our code)."""
    try:
        return _completion(orjson.loads(payload), max_tokens)
    except ValueError as e:
        raise ValueError(f"not a chat completion: {e}") from None


def _completion(data: Any, max_tokens: int) -> TeacherReply:
    """The reply of a chat completion's JSON; ValueError names what is missing or of another type."""
    choices = _field(data, "choices", list)
    if not choices:
        raise ValueError("no choices")
    message = _field(choices[0], "message", dict)
    calls = tuple(ToolCall(_field(c, "id", str, "") or "", _field(_field(c, "function", dict), "name", str),
                           _field(c["function"], "arguments", str, "") or "{}")
                  for c in _field(message, "tool_calls", list, []) or ())
    usage = _field(data, "usage", dict, {}) or {}
    finish_reason = _field(choices[0], "finish_reason", str, "") or "stop"
    completion_tokens = _field(usage, "completion_tokens", int, 0) or 0
    return TeacherReply(
        content=_field(message, "content", str, "") or "",
        reasoning=_field(message, "reasoning", str, None) or _field(message, "reasoning_content", str, None),
        tool_calls=calls,
        finish_reason=finish_reason,
        usage=Usage(_field(usage, "prompt_tokens", int, 0) or 0, completion_tokens),
        # vLLM shortens max_tokens to what is left of the context instead of refusing, so a turn cut
        # before the max_tokens asked for was cut by the context window, not by max_tokens.
        context_full=finish_reason == "length" and 0 < completion_tokens < max_tokens,
    )


_REQUIRED = object()


def _field(obj: Any, key: str, kind: type, default: Any = _REQUIRED) -> Any:
    """`obj[key]` if it is a `kind`; a missing or null one is `default` (when there is one)."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object holding {key!r}, got {type(obj).__name__}")
    value = obj.get(key)
    if value is None and default is not _REQUIRED:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{key!r} is not a {kind.__name__}")
    return value
