"""vLLM's answers read where they enter: the optional fields of a completion, and what each refusal tells the user."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hfdistill.core.errors import ServiceError, TeacherError
from hfdistill.core.types import ToolCall, Usage
from hfdistill.edge import Server, status_fault
from hfdistill.teacher.replies import refusal, reply_of

URL = "http://t/v1"
SERVER = Server("teacher", URL, TeacherError)


def status_error(status: int, payload: bytes, retry_after: str | None) -> ServiceError:
    """A status as the teacher reads it through the edge: its own refusals first, the edge's reading else."""
    return refusal(SERVER, status, payload, retry_after) or status_fault(SERVER, status, payload, retry_after)


def _refusal(status: int, message: str, retry_after: str | None = None) -> ServiceError:
    return status_error(status, json.dumps({"error": {"message": message}}).encode(), retry_after)


def _reply(choice: dict[str, Any], **data: Any) -> bytes:
    return json.dumps({"choices": [choice], **data}).encode()


def test_a_fcfs_server_refusing_priorities_says_how_to_start_vllm_or_what_to_pass() -> None:
    error = _refusal(400, "Got priority -1 but Priority scheduling is not enabled.")
    assert type(error) is TeacherError and error.cause == "teacher_priority_refused" and not error.transient
    assert str(error) == (f"teacher {URL} refuses request priorities (Got priority -1 but Priority scheduling is not "
                          "enabled.); start vLLM with --scheduling-policy priority, or pass --priority auto or off")


@pytest.mark.parametrize(("status", "message", "cause", "fix"), [
    pytest.param(400, '"auto" tool choice requires --enable-auto-tool-choice', "teacher_tools_refused",
                 "--tool-call-mode text", id="tools-refused"),
    pytest.param(401, "invalid api key", "teacher_http_401", "set OPENAI_API_KEY or --api-key", id="401"),
    pytest.param(403, "forbidden", "teacher_http_403", "set OPENAI_API_KEY or --api-key", id="403"),
    pytest.param(404, "The model `x` does not exist.", "teacher_http_404", "VLLM_URL ends in /v1", id="404"),
    pytest.param(400, "temperature must be non-negative", "teacher_http_400", "answered HTTP 400", id="other-400"),
])
def test_each_refusal_is_labelled_and_names_the_fix(status: int, message: str, cause: str, fix: str) -> None:
    error = _refusal(status, message)
    assert error.cause == cause and not error.transient
    assert fix in str(error) and message in str(error) and URL in str(error)


def test_retry_after_is_kept_only_for_a_refusal_worth_retrying() -> None:
    assert _refusal(429, "slow down", retry_after="12").retry_after == 12.0
    assert _refusal(503, "overloaded", retry_after="not a number").retry_after is None
    assert _refusal(400, "bad", retry_after="12").retry_after is None


@pytest.mark.parametrize(("payload", "shown"), [
    pytest.param(b'{"object": "error", "message": "top-level text"}', "top-level text", id="vllm-top-level"),
    pytest.param(b'{"error": "a bare string"}', "a bare string", id="error-string"),
    pytest.param(b"  <html>Bad Gateway</html>\n", "<html>Bad Gateway</html>", id="not-json"),
    pytest.param(b"x" * 2000, "x" * 500, id="long-body-cut"),
])
def test_the_servers_own_words_are_quoted(payload: bytes, shown: str) -> None:
    assert str(status_error(502, payload, None)) == f"teacher {URL} answered HTTP 502: {shown}"


def test_null_and_missing_optional_fields_take_their_defaults() -> None:
    call = {"id": None, "function": {"name": "search", "arguments": None}}
    reply = reply_of(_reply({"message": {"content": None, "reasoning_content": "hmm", "tool_calls": [call]},
                             "finish_reason": None}), max_tokens=10)
    assert reply.content == "" and reply.reasoning == "hmm" and reply.finish_reason == "stop"
    assert reply.tool_calls == (ToolCall("", "search", "{}"),)
    assert reply.usage == Usage(0, 0) and not reply.context_full


def test_a_turn_cut_at_max_tokens_is_not_the_context_window() -> None:
    cut = _reply({"message": {"content": "a"}, "finish_reason": "length"}, usage={"completion_tokens": 10})
    assert not reply_of(cut, max_tokens=10).context_full


@pytest.mark.parametrize(("choice", "usage", "named"), [
    pytest.param({"message": {"content": "a"}}, {"completion_tokens": True}, "'completion_tokens' is not a int",
                 id="bool-is-not-a-count"),
    pytest.param({"message": {"content": "a"}}, {"prompt_tokens": "12"}, "'prompt_tokens' is not a int",
                 id="count-as-text"),
    pytest.param({"message": {"tool_calls": ["search"]}}, {}, "expected an object holding 'id', got str",
                 id="call-not-an-object"),
    pytest.param({"message": {"content": "a"}, "finish_reason": 1}, {}, "'finish_reason' is not a str",
                 id="finish-reason-not-text"),
])
def test_a_malformed_reply_names_the_field_at_fault(choice: dict[str, Any], usage: dict[str, Any],
                                                     named: str) -> None:
    with pytest.raises(ValueError, match="not a chat completion") as caught:  # the edge's teacher_bad_response
        reply_of(_reply(choice, usage=usage), max_tokens=10)
    assert named in str(caught.value)
