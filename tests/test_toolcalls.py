"""Parsing what the teacher wrote: thinking, lenient <tool_call> blocks, answers, folding."""

from __future__ import annotations

import pytest

from hfdistill.core.toolcalls import CallError, ToolRequest, extract_answer, interpret_turn, split_thinking
from hfdistill.core.tools import SearchTool
from hfdistill.core.types import ToolCall

TOOLS = {"search": SearchTool()}


@pytest.mark.parametrize(
    ("content", "reasoning", "visible", "thinking"),
    [
        pytest.param("<think>\nhmm\n</think>\n\nHello", None, "Hello", "hmm", id="inline-think"),
        pytest.param("hmm\n</think>\n\nHello", None, "Hello", "hmm", id="opened-by-template"),
        pytest.param("Hello", "server thought", "Hello", "server thought", id="reasoning-field"),
        pytest.param("<think>a</think>Hello", "server", "Hello", "server", id="field-wins"),
        pytest.param("Hello", None, "Hello", None, id="no-thinking"),
        pytest.param("<think>  </think>Hi", None, "Hi", None, id="empty-think"),
        pytest.param("<think>\nI keep thinking", None, "", "I keep thinking", id="cut-inside-think"),
        pytest.param("<think>\na\n</think>\n\nb <think>\nmore", None, "b", "a\n\nmore", id="cut-in-second-think"),
        pytest.param("x<think>a</think>y<think></think>z<think>b</think>", None, "xyz", "a\n\nb", id="three-blocks"),
        pytest.param("<think><think>a</think>b", None, "b", "<think>a", id="nested-open"),
        pytest.param("<think>a</think></think>b", None, "</think>b", "a", id="stray-close-after"),
    ],
)
def test_split_thinking(content: str, reasoning: str | None, visible: str, thinking: str | None) -> None:
    assert split_thinking(content, reasoning) == (visible, thinking)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        pytest.param("<answer>Paris</answer>", "Paris", id="simple"),
        pytest.param("<answer>a</answer> then <answer> b </answer>", "b", id="last-wins"),
        pytest.param("no answer here", None, id="none"),
        pytest.param("<answer>unclosed", None, id="unclosed"),
        pytest.param("<answer>\nmulti\nline\n</answer>", "multi\nline", id="multiline"),
    ],
)
def test_extract_answer(text: str, answer: str | None) -> None:
    assert extract_answer(text) == answer


def _text_turn(content: str):
    return interpret_turn(content, None, (), tools=TOOLS, call_id="call_1")


@pytest.mark.parametrize(
    ("content", "queries"),
    [
        pytest.param('<tool_call>{"name": "search", "arguments": {"query_list": ["a", "b"]}}</tool_call>',
                     ("a", "b"), id="query_list"),
        pytest.param('<tool_call>{"name": "search", "arguments": {"query": ["a"]}}</tool_call>', ("a",),
                     id="query-list-tongyi"),
        pytest.param('<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>', ("a",),
                     id="query-string"),
        pytest.param('<tool_call>{"name": "search", "arguments": {"query_list": ["a",],}}</tool_call>', ("a",),
                     id="trailing-commas"),
        pytest.param("<tool_call>{'name': 'search', 'arguments': {'query_list': ['a']}}</tool_call>", ("a",),
                     id="single-quotes"),
        pytest.param('<tool_call>\n{"name": "search", "arguments": {"query_list": ["a"]}}', ("a",),
                     id="unclosed-tag-at-end"),
        pytest.param('<tool_call>{"name": "search", "arguments": "{\\"query_list\\": [\\"a\\"]}"}</tool_call>',
                     ("a",), id="arguments-as-json-string"),
        pytest.param('<tool_call>{"name": "search", "arguments": {"query_list": ["a"]}}</tool_call>'
                     '<tool_call>{"name": "search", "arguments": {"query_list": ["b", "a"]}}</tool_call>',
                     ("a", "b"), id="two-calls-folded-deduplicated"),
    ],
)
def test_text_tool_calls_are_parsed_leniently(content: str, queries: tuple[str, ...]) -> None:
    turn = _text_turn("Let me search.\n" + content)
    assert turn.calls == (ToolRequest(id="call_1", name="search", arguments={"query_list": list(queries)}),)
    assert turn.content == "Let me search."


@pytest.mark.parametrize(
    ("content", "message", "stored_args"),
    [
        pytest.param("<tool_call>{not json at all</tool_call>", "could not parse", "", id="malformed-json"),
        pytest.param('<tool_call>{"name": "browse", "arguments": {"url": "x"}}</tool_call>', "unknown tool 'browse'",
                     '{"url": "x"}', id="unknown-tool"),
        pytest.param('<tool_call>{"name": "search", "arguments": {"query_list": []}}</tool_call>', "non-empty",
                     '{"query_list": []}', id="empty-query-list"),
        pytest.param('<tool_call>{"name": "search", "arguments": {"query_list": ["  "]}}</tool_call>', "non-empty",
                     '{"query_list": ["  "]}', id="blank-query"),
        pytest.param('<tool_call>["search"]</tool_call>', "could not parse", "", id="not-an-object"),
    ],
)
def test_bad_calls_become_errors(content: str, message: str, stored_args: str) -> None:
    turn = _text_turn(content)
    assert len(turn.calls) == 1
    error = turn.calls[0]
    assert isinstance(error, CallError)
    assert message in error.message
    assert error.arguments == stored_args


def test_native_calls_win_and_keep_the_server_id() -> None:
    native = (ToolCall("chatcmpl-tool-9", "search", '{"query": ["x"]}'),)
    turn = interpret_turn("", "thinking", native, tools=TOOLS, call_id="call_1")
    assert turn.calls == (ToolRequest(id="chatcmpl-tool-9", name="search", arguments={"query_list": ["x"]}),)
    assert turn.reasoning == "thinking"


def test_a_valid_call_next_to_a_bad_one_is_executed() -> None:
    turn = _text_turn('<tool_call>{"name": "browse", "arguments": {}}</tool_call>'
                      '<tool_call>{"name": "search", "arguments": {"query_list": ["q"]}}</tool_call>')
    assert turn.calls == (ToolRequest(id="call_1", name="search", arguments={"query_list": ["q"]}),)


def test_answer_is_read_from_visible_text_not_thinking() -> None:
    turn = interpret_turn("<think><answer>draft</answer></think>Final: <answer>Paris</answer>", None, (),
                          tools=TOOLS, call_id="c")
    assert turn.answer == "Paris"
    assert turn.reasoning == "<answer>draft</answer>"
