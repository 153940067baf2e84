"""The rollout loop's behaviours, driven through Distiller over real HTTP by a scripted teacher."""

from __future__ import annotations

import contextlib
import itertools
import json
from pathlib import Path
from typing import Any

import datasets
import pytest

from hfdistill import DistillConfig, Distiller
from hfdistill.core.rollout import CUT_NOTE
from tests.fakes import (
    FORCE_ANSWER,
    Answer,
    CallTool,
    Cut,
    FakeRetriever,
    FakeTeacher,
    Overflow,
    Raw,
    Say,
    Search,
    Served,
    TeacherBehaviour,
)
from tests.verl_rules import check_messages

Q = "What is the capital of France?"


def distill(teacher: Served, retriever: Served, questions: list[str] | None = None, **options: Any
            ) -> list[dict[str, Any]]:
    ds = datasets.Dataset.from_list([{"question": q, "golden_answers": ["Paris"]} for q in questions or [Q]])
    config = DistillConfig(vllm_url=f"{teacher.url}/v1", retrieval_url=f"{retriever.url}/retrieve", **options)
    with Distiller(config) as distiller:
        rows = distiller.map(ds, batch_size=2).to_list()
    for row in rows:
        check_messages(row["messages"])
    return rows


@pytest.mark.parametrize(
    ("steps", "stop_reason", "turns", "calls"),
    [
        pytest.param([Search(["capital of France"]), Answer("Paris")], "answer", 2, 1, id="answer"),
        pytest.param([Answer("Paris")], "answer", 1, 0, id="answer-without-search"),
        pytest.param([Search(["a"]), Search(["b"]), Search(["c"]), Answer("x")], "max_turns", 3, 3, id="max-turns"),
        pytest.param([Search(["a"]), Cut()], "length", 2, 1, id="length"),
        pytest.param([Search(["a"]), Overflow()], "context", 1, 1, id="context-400"),
        pytest.param([Say("I think it is Paris.")], "no_tool_call", 1, 0, id="no-tool-call"),
    ],
)
def test_stop_reasons(teacher: tuple[FakeTeacher, Served], retriever: tuple[FakeRetriever, Served],
                      steps: list[Any], stop_reason: str, turns: int, calls: int) -> None:
    teacher[0].script(Q, *steps)
    row = distill(teacher[1], retriever[1])[0]
    assert row["stop_reason"] == stop_reason
    assert row["assistant_turns"] == turns
    assert row["num_tool_calls"] == calls
    assert row["prediction"] == ("Paris" if stop_reason == "answer" else "")
    if stop_reason == "length":
        assert row["messages"][-1]["content"].startswith("Let me think")
        assert row["usage"]["completion_tokens"] >= 2048


def _observations(row: dict[str, Any]) -> list[str]:
    """Tool results: tool messages, and the `<tool_response>` user turns that answer a non-JSON call."""
    out = []
    for m in row["messages"][2:]:
        if m["role"] == "tool":
            out.append(m["content"])
        elif m["role"] == "user" and m["content"].startswith("<tool_response>\n"):
            out.append(m["content"].removeprefix("<tool_response>\n").removesuffix("\n</tool_response>"))
    return out


def _answers_a_call(messages: list[dict[str, Any]]) -> bool:
    """Every tool message answers the call of the assistant turn just before it (OpenAI's rule)."""
    for before, message in itertools.pairwise(messages):
        if message["role"] == "tool":
            calls = before["tool_calls"] or [] if before["role"] == "assistant" else []
            if [c["id"] for c in calls] != [message["tool_call_id"]] or calls[0]["function"]["name"] != message["name"]:
                return False
    return True


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        pytest.param(Raw('<tool_call>{"name": "search", "arguments": {"query_list": ["a"</tool_call>'),
                     "could not parse the tool call", id="malformed-json"),
        pytest.param(CallTool("browse", {"url": "http://x"}), "unknown tool 'browse'", id="unknown-tool"),
        pytest.param(CallTool("search", {"query_list": []}), "non-empty", id="empty-query-list"),
        pytest.param(CallTool("search", {"topic": "France"}), "non-empty", id="missing-query"),
    ],
)
def test_model_mistakes_are_observations_and_the_run_goes_on(teacher: tuple[FakeTeacher, Served],
                                                             retriever: tuple[FakeRetriever, Served],
                                                             bad: Any, error: str) -> None:
    teacher[0].script(Q, bad, Search(["capital of France"]), Answer("Paris"))
    row = distill(teacher[1], retriever[1], max_assistant_turns=5)[0]
    assert row["stop_reason"] == "answer"
    assert row["num_tool_errors"] == 1
    assert row["num_tool_calls"] == 1
    first = _observations(row)[0]
    assert first.startswith("Error: ") and error in first
    assert "Query: capital of France" in _observations(row)[1]
    assert _answers_a_call(row["messages"])  # no orphan tool message, whatever the mistake
    malformed = isinstance(bad, Raw)
    # every mistake is a tool_error; a call that is not even JSON is also a malformed_call
    assert row["quality_flags"] == (["tool_error", "malformed_call"] if malformed else ["tool_error"])
    # the model saw the error as a tool result before its next turn: a tool message after the call vLLM
    # parsed, or the model's own <tool_response> format after a call it left in the text
    seen = next(r["messages"] for r in teacher[0].requests if any(error in str(m["content"]) for m in r["messages"]))
    assert error in seen[-1]["content"]
    if malformed:
        assert seen[-1]["role"] == "user" and seen[-1]["content"].startswith("<tool_response>\nError: ")
        assert row["messages"][2] == {"role": "assistant", "content": bad.content, "reasoning_content": None,
                                      "tool_calls": None, "tool_call_id": None, "name": None}
    else:
        assert seen[-1]["role"] == "tool" if seen[-2].get("tool_calls") else seen[-1]["content"].startswith(
            "<tool_response>\nError: ")
        assert row["messages"][3]["name"] == bad.name  # the tool message names the tool that was called
    # the start-up probe, then only the good search: errors never reach the server
    assert [r["queries"] for r in retriever[0].requests] == [["test"], ["capital of France"]]


def test_several_calls_in_one_turn_are_folded_into_one(teacher: tuple[FakeTeacher, Served],
                                                       retriever: tuple[FakeRetriever, Served]) -> None:
    both = ('<tool_call>{"name": "search", "arguments": {"query_list": ["capital of France"]}}</tool_call>\n'
            '<tool_call>{"name": "search", "arguments": {"query": "Paris"}}</tool_call>')
    teacher[0].script(Q, Raw(both), Answer("Paris"))
    row = distill(teacher[1], retriever[1])[0]
    call = row["messages"][2]["tool_calls"]
    assert len(call) == 1
    assert json.loads(call[0]["function"]["arguments"]) == {"query_list": ["capital of France", "Paris"]}
    assert retriever[0].requests[-1]["queries"] == ["capital of France", "Paris"]
    assert "Query: capital of France" in _observations(row)[0] and "\n\nQuery: Paris\n" in _observations(row)[0]


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content", None])
def test_reasoning_is_captured_from_every_place_vllm_puts_it(retriever: tuple[FakeRetriever, Served],
                                                            field: str | None) -> None:
    fake = FakeTeacher(TeacherBehaviour(reasoning=field))
    served = Served(fake.app())
    try:
        row = distill(served, retriever[1])[0]
    finally:
        served.close()
    assistants = [m for m in row["messages"] if m["role"] == "assistant"]
    assert [m["reasoning_content"] for m in assistants] == ["I should look this up.", "I know enough now."]
    assert all("<think>" not in m["content"] for m in assistants)


def test_hermes_parser_failure_is_parsed_client_side(retriever: tuple[FakeRetriever, Served]) -> None:
    fake = FakeTeacher(TeacherBehaviour(hermes_fails=True))
    served = Served(fake.app())
    try:
        row = distill(served, retriever[1], tool_call_mode="native")[0]
    finally:
        served.close()
    assert row["stop_reason"] == "answer" and row["num_tool_calls"] == 1
    assert row["messages"][2]["content"] == ""
    assert row["messages"][2]["tool_calls"][0]["id"] == "call_1"


def test_verl_observation_format(teacher: tuple[FakeTeacher, Served], retriever: tuple[FakeRetriever, Served]
                                 ) -> None:
    row = distill(teacher[1], retriever[1], observation_format="verl", topk=2)[0]
    observation = json.loads(_observations(row)[0])
    assert observation == {"result": 'Doc 1 (Title: "Paris")\nParis is the capital and largest city of France.\n\n'
                                     'Doc 2 (Title: "France")\nFrance is a country in Western Europe. Its capital '
                                     'is Paris.'}


def test_num_rollouts_and_empty_questions(teacher: tuple[FakeTeacher, Served],
                                          retriever: tuple[FakeRetriever, Served]) -> None:
    ds = datasets.Dataset.from_list([{"question": Q, "golden_answers": ["Paris"]},
                                     {"question": "   ", "golden_answers": ["x"]}])
    config = DistillConfig(vllm_url=f"{teacher[1].url}/v1", retrieval_url=f"{retriever[1].url}/retrieve",
                           num_rollouts=3)
    with Distiller(config) as distiller:
        rows = distiller.map(ds).to_list()
    assert [(r["input_index"], r["rollout_index"]) for r in rows] == [(0, 0), (0, 1), (0, 2)]
    assert [s["input_index"] for s in distiller.skipped] == [1]
    assert distiller.failures == []  # a blank question is skipped, not failed
    assert not any(m["content"].strip() == "Question:" for r in teacher[0].requests for m in r["messages"])


def test_a_rollout_that_fails_is_recorded_and_the_others_go_on(teacher: tuple[FakeTeacher, Served],
                                                              retriever: tuple[FakeRetriever, Served],
                                                              tmp_path: Path) -> None:
    # A user template that works on the start-up sample but breaks on a query with no results.
    (tmp_path / "tool_observation.j2").write_text("{{ results[0].documents[0].title }}")
    teacher[0].script("Nothing matches this?", Search(["zzzz qqqq"]), Answer("x"))
    ds = datasets.Dataset.from_list([{"question": q} for q in (Q, "Nothing matches this?", Q + " Again?")])
    config = DistillConfig(vllm_url=f"{teacher[1].url}/v1", retrieval_url=f"{retriever[1].url}/retrieve",
                           template_dir=str(tmp_path))
    with Distiller(config) as distiller:
        rows = distiller.map(ds).to_list()
    assert [r["input_index"] for r in rows] == [0, 2]
    [failure] = distiller.failures
    assert (failure["input_index"], failure["cause"]) == (1, "TemplateError")
    assert "tool_observation.j2" in failure["error"]


# ---------------------------------------------------------------- the forced answer at the context limit


@pytest.mark.parametrize(("forced", "budget", "stop_reason", "prediction"), [
    pytest.param("Paris", 200, "forced_answer", "Paris", id="answers-when-asked"),
    pytest.param(None, 200, "context", "", id="no-answer-even-when-asked"),
    pytest.param("Paris", 100_000, "max_turns", "", id="within-the-budget"),
])
def test_the_teacher_is_asked_for_its_answer_when_the_next_turn_would_not_fit(
        retriever: tuple[FakeRetriever, Served], forced: str | None, budget: int, stop_reason: str,
        prediction: str) -> None:
    fake = FakeTeacher(TeacherBehaviour(forced_answer=forced))
    fake.script(Q, Search(["capital of France"]), Search(["Paris"]), Search(["France"]), Answer("Lyon"))
    with contextlib.closing(Served(fake.app())) as teacher:
        row = distill(teacher, retriever[1], max_context_tokens=budget)[0]
    assert (row["stop_reason"], row["prediction"]) == (stop_reason, prediction)
    if stop_reason == "max_turns":
        assert all(not str(r["messages"][-1]["content"]).startswith(FORCE_ANSWER) for r in fake.requests)
        return
    # after the first search (~170 tokens used, ~80 more for its observation) the next turn would need > 200
    assert row["assistant_turns"] == 2 and row["num_tool_calls"] == 1
    asked = row["messages"][-2]
    assert asked["role"] == "user" and asked["content"].startswith(FORCE_ANSWER)
    assert asked["content"].endswith("<answer>your answer</answer>")  # the whole of Tongyi's wording
    assert fake.requests[-1]["messages"][-1] == {"role": "user", "content": asked["content"]}
    # the search result that made it too long is cut so that the request fits (here: all of it), and says so
    observation = row["messages"][-3]
    assert observation["role"] == "tool" and observation["content"] == CUT_NOTE
    assert fake.requests[-1]["messages"][-2]["content"] == CUT_NOTE


def test_no_force_answer_keeps_the_conversation_going_to_its_limit(teacher: tuple[FakeTeacher, Served],
                                                                   retriever: tuple[FakeRetriever, Served]) -> None:
    teacher[0].script(Q, Search(["a"]), Search(["b"]), Overflow())
    row = distill(teacher[1], retriever[1], max_context_tokens=200, force_answer=False)[0]
    assert row["stop_reason"] == "context" and row["assistant_turns"] == 2
    assert not any(str(m["content"]).startswith(FORCE_ANSWER) for m in row["messages"])


def test_the_budget_is_the_servers_context_window_less_max_tokens(retriever: tuple[FakeRetriever, Served]) -> None:
    fake = FakeTeacher(TeacherBehaviour(max_model_len=2048 + 200))
    fake.script(Q, Search(["capital of France"]), Search(["Paris"]), Answer("Lyon"))
    with contextlib.closing(Served(fake.app())) as teacher:
        row = distill(teacher, retriever[1])[0]  # max_tokens 2048 (the default) leaves 200 prompt tokens
    assert row["stop_reason"] == "forced_answer" and row["prediction"] == "Paris"


@pytest.mark.parametrize("text_protocol", [False, True], ids=["native", "text"])
def test_the_last_observation_is_cut_to_what_the_budget_leaves(teacher: tuple[FakeTeacher, Served],
                                                               retriever: tuple[FakeRetriever, Served],
                                                               text_protocol: bool) -> None:
    long = [{"id": "9", "contents": '"Paris"\n' + "Paris is the capital of France. " * 60}]
    fake = FakeRetriever(long)
    teacher[0].script(Q, Search(["capital of France"]), Search(["more"]), Answer("Lyon"))
    with contextlib.closing(Served(fake.app())) as served:
        row = distill(teacher[1], served, max_context_tokens=700,
                      tool_call_mode="text" if text_protocol else "auto")[0]
    assert row["stop_reason"] == "forced_answer"
    observation = row["messages"][-3]["content"]
    assert observation.endswith(CUT_NOTE) and "Query: capital of France" in observation
    sent = teacher[0].requests[-1]["messages"]
    on_wire = sent[-2]["content"]
    assert on_wire == (f"<tool_response>\n{observation}\n</tool_response>" if text_protocol else observation)
    assert 0 < observation.count("Paris is the capital of France.") < 60  # part of the passage, not all of it
