"""The teacher client's pure parts: a completion validated where it enters, vLLM's refusals read."""

from __future__ import annotations

import json

import pytest

from hfdistill.core.errors import ContextLengthError, TeacherError
from hfdistill.core.retry import RetryPolicy, is_transient
from hfdistill.edge import Server, bad_reply, status_fault
from hfdistill.teacher.replies import refusal, reply_of

SERVER = Server("teacher", "http://t/v1", TeacherError)

NATIVE = {"choices": [{"message": {"content": None, "reasoning": "\nthink\n", "tool_calls": [
    {"id": "chatcmpl-tool-1", "type": "function", "function": {"name": "search", "arguments": '{"query": ["x"]}'}}]},
    "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 12, "completion_tokens": 7}}


def test_a_vllm_completion_is_read() -> None:
    reply = reply_of(json.dumps(NATIVE).encode(), max_tokens=100)
    assert reply.content == "" and reply.reasoning == "\nthink\n" and reply.finish_reason == "tool_calls"
    assert reply.tool_calls[0].arguments == '{"query": ["x"]}' and reply.usage.completion_tokens == 7
    assert not reply.context_full


def test_a_cut_short_of_max_tokens_is_the_context_window() -> None:
    cut = {"choices": [{"message": {"content": "a"}, "finish_reason": "length"}], "usage": {"completion_tokens": 1}}
    assert reply_of(json.dumps(cut).encode(), max_tokens=100).context_full


@pytest.mark.parametrize("payload", [
    pytest.param(b"<html>502</html>", id="not-json"),
    pytest.param(b'{"choices": []}', id="no-choice"),
    pytest.param(b'{"choices": [{"message": "hi"}]}', id="message-not-an-object"),
    pytest.param(b'{"choices": [{"message": {"content": 3}}]}', id="content-not-text"),
    pytest.param(b'{"choices": [{"message": {"tool_calls": [{"function": {}}]}}]}', id="call-without-name"),
    pytest.param(b'[1, 2]', id="a-list"),
])
def test_anything_else_is_a_transient_teacher_error(payload: bytes) -> None:
    with pytest.raises(ValueError, match="not a chat completion") as caught:
        reply_of(payload, max_tokens=10)
    error = bad_reply(SERVER, caught.value, payload)  # as the edge names it
    assert type(error) is TeacherError and error.transient and error.cause == "teacher_bad_response"
    assert "not a chat completion" in str(error) and "http://t/v1" in str(error)


@pytest.mark.parametrize(("status", "message", "kind", "transient"), [
    (400, "This model's maximum context length is 4096 tokens. However, your prompt contains at least 4097",
     ContextLengthError, False),
    (400, "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)", ContextLengthError, False),
    (400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set', TeacherError,
     False),
    (409, "conflict", TeacherError, False),
    (429, "slow down", TeacherError, True),
    (503, "overloaded", TeacherError, True),
])
def test_vllm_refusals_are_read(status: int, message: str, kind: type, transient: bool) -> None:
    payload = json.dumps({"error": {"message": message}}).encode()
    error = refusal(SERVER, status, payload, None) or status_fault(SERVER, status, payload, None)
    assert type(error) is kind and error.transient is transient and is_transient(status) is transient


def test_backoff_doubles_up_to_its_cap_and_honours_retry_after() -> None:
    policy = RetryPolicy(backoff=1.0, max_backoff=4.0)
    assert [policy.delay(n, rand=1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 4.0]
    assert policy.delay(1, rand=0.0) == 0.5  # jitter: half to all of it
    assert policy.delay(1, rand=0.5, retry_after=7) == 7
