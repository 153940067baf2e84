"""vLLM 0.32's protocol details, against the scripted fake (the real-engine tier proves them against vLLM itself):
what goes back to the teacher, the context limit in its three shapes, start-up refusals, a server that stops
answering."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pytest
from aiohttp import web

from hfdistill import DistillConfig, Distiller, RetryPolicy
from hfdistill.cli.main import main
from tests.conftest import write_jsonl
from tests.fakes import (
    Answer,
    CallTool,
    Cut,
    FakeRetriever,
    FakeTeacher,
    Overflow,
    Raw,
    Search,
    Served,
    TeacherBehaviour,
)
from tests.verl_rules import check_messages

Q = "What is the capital of France?"


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Served] = []

    def start(behaviour: TeacherBehaviour, *steps: Any) -> tuple[FakeTeacher, Served]:
        fake = FakeTeacher(behaviour)
        if steps:
            fake.script(Q, *steps)
        started.append(Served(fake.app()))
        return fake, started[-1]

    yield start
    for served in started:
        served.close()


def distill(teacher: Served, retriever: Served, **options: Any) -> tuple[Distiller, list[dict[str, Any]]]:
    ds = datasets.Dataset.from_list([{"question": Q, "golden_answers": ["Paris"]}])
    config = DistillConfig(vllm_url=f"{teacher.url}/v1", retrieval_url=f"{retriever.url}/retrieve", **options)
    with Distiller(config) as distiller:
        rows = distiller.map(ds).to_list()
    for row in rows:
        check_messages(row["messages"])
    return distiller, rows


# ---------------------------------------------------------------- what the teacher sees of its own turns


@pytest.mark.parametrize("reasoning", ["reasoning", None], ids=["reasoning-parser", "plain"])
def test_text_mode_sends_back_the_thinking_even_when_the_server_parsed_it_out(
        serve: Any, retriever: tuple[FakeRetriever, Served], reasoning: str | None) -> None:
    fake, served = serve(TeacherBehaviour(native=False, reasoning=reasoning))
    _, [row] = distill(served, retriever[1])
    assert row["messages"][2]["reasoning_content"] == "I should look this up."
    sent = fake.requests[1]["messages"][2]
    assert sent == {"role": "assistant", "content": '<think>\nI should look this up.\n</think>\n\n<tool_call>\n'
                                                    '{"name": "search", "arguments": {"query_list": '
                                                    '["capital of France"]}}\n</tool_call>'}
    assert fake.requests[1]["messages"][3]["content"].startswith("<tool_response>\nQuery: capital of France")


def test_native_mode_sends_back_the_call_as_the_server_returned_it(serve: Any,
                                                                   retriever: tuple[FakeRetriever, Served]) -> None:
    fake, served = serve(TeacherBehaviour(), Search(["Zürich"], key="query"), Answer("Paris"))
    _, [row] = distill(served, retriever[1], tool_call_mode="native")
    # stop strings in native mode too (a model inventing the tool's result is cut), the longer one first
    assert all(r["stop"] == ["\n<tool_response>", "<tool_response>"] for r in fake.requests)
    stored = row["messages"][2]["tool_calls"][0]
    assert json.loads(stored["function"]["arguments"]) == {"query_list": ["Zürich"]}  # verl's name, stored
    sent = fake.requests[1]["messages"][2]
    [call] = sent["tool_calls"]
    # Tongyi's argument name and the server's own id and escaping, untouched
    assert call["function"] == {"name": "search", "arguments": json.dumps({"query": ["Zürich"]})}
    assert call["id"].startswith("chatcmpl-tool-") and call["id"] == stored["id"]
    assert sent["reasoning_content"] == "\nI should look this up.\n"
    assert fake.requests[1]["messages"][3] == {"role": "tool", "tool_call_id": call["id"],
                                               "content": row["messages"][3]["content"]}


def test_a_call_the_parser_left_in_the_text_goes_back_as_written(serve: Any,
                                                                retriever: tuple[FakeRetriever, Served]) -> None:
    written = '<tool_call>\n{"name": "search", "arguments": {"query_list": ["capital of France",],}}\n</tool_call>'
    fake, served = serve(TeacherBehaviour(), Raw(written), Answer("Paris"))
    _, [row] = distill(served, retriever[1], tool_call_mode="native")
    assert row["num_tool_calls"] == 1 and row["messages"][2]["content"] == ""
    assistant, result = fake.requests[1]["messages"][2:4]
    assert assistant == {"role": "assistant", "content": written}
    assert result["role"] == "user" and result["content"].startswith("<tool_response>\nQuery: capital of France")


def test_an_unknown_tools_message_names_the_tool_that_was_called(serve: Any,
                                                                retriever: tuple[FakeRetriever, Served]) -> None:
    _, served = serve(TeacherBehaviour(), CallTool("browse", {"url": "x"}), Answer("Paris"))
    _, [row] = distill(served, retriever[1], tool_call_mode="native")
    call, result = row["messages"][2]["tool_calls"][0], row["messages"][3]
    assert call["function"]["name"] == "browse"
    assert (result["name"], result["tool_call_id"]) == ("browse", call["id"])
    assert "unknown tool 'browse'" in result["content"]


# ---------------------------------------------------------------- the context window


@pytest.mark.parametrize(
    ("step", "stop_reason", "turns"),
    [
        pytest.param(Overflow(), "context", 1, id="prompt-over-the-limit"),
        pytest.param(Overflow(exact=True), "context", 1, id="prompt-exactly-at-the-limit"),
        pytest.param(Cut(at_context=True), "context", 2, id="max-tokens-shrunk-by-vllm"),
        pytest.param(Cut(), "length", 2, id="cut-by-max-tokens"),
    ],
)
@pytest.mark.parametrize("native", [True, False], ids=["native", "text"])
def test_the_context_window_ends_a_rollout_with_stop_reason_context(
        serve: Any, retriever: tuple[FakeRetriever, Served], step: Any, stop_reason: str, turns: int,
        native: bool) -> None:
    _, served = serve(TeacherBehaviour(native=native), Search(["capital of France"]), step)
    distiller, [row] = distill(served, retriever[1])
    assert not distiller.failures
    assert (row["stop_reason"], row["assistant_turns"], row["num_tool_calls"]) == (stop_reason, turns, 1)


@pytest.mark.parametrize("reasoning", ["reasoning", None], ids=["reasoning-parser", "plain"])
@pytest.mark.parametrize("native", [True, False], ids=["native", "text"])
def test_a_turn_cut_inside_its_thinking_keeps_it_in_reasoning_content(
        serve: Any, retriever: tuple[FakeRetriever, Served], reasoning: str | None, native: bool) -> None:
    _, served = serve(TeacherBehaviour(native=native, reasoning=reasoning), Search(["capital of France"]),
                      Cut(think="I keep thinking"))
    _, [row] = distill(served, retriever[1])
    last = row["messages"][-1]
    assert row["stop_reason"] == "length"
    assert (last["content"], last["reasoning_content"]) == ("", "I keep thinking")


# ---------------------------------------------------------------- start-up and a server that stops answering


def test_native_mode_against_a_server_without_a_tool_parser_fails_at_start(
        text_teacher: tuple[FakeTeacher, Served], retriever: tuple[FakeRetriever, Served], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    fake, served = text_teacher
    inp = write_jsonl(tmp_path / "in.jsonl", [{"question": Q}])
    out = tmp_path / "out.parquet"
    rc = main(["generate", "--vllm_url", f"{served.url}/v1", "--retrieval_url", f"{retriever[1].url}/retrieve",
               "--input_file", str(inp), "--output_file", str(out), "--tool-call-mode", "native"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1, err
    assert "--enable-auto-tool-choice --tool-call-parser hermes" in errors[0]
    assert "--tool-call-mode text" in errors[0]
    assert fake.requests == [] and not out.exists()  # no rollout was sent, no file written


class _Stopped:
    """A vLLM stopped with SIGTERM: after `after` chat requests it accepts connections but never answers."""

    def __init__(self, fake: FakeTeacher, after: int) -> None:
        self.fake, self.after, self.seen = fake, after, 0

    def app(self) -> web.Application:
        inner = self.fake.app()
        app = web.Application()

        async def hang_or_pass(request: web.Request) -> web.StreamResponse:
            if request.path.endswith("/chat/completions"):
                self.seen += 1
            if self.seen > self.after:
                await asyncio.sleep(3600)
            handler = inner.router.resolve  # delegate to the fake's own routes
            match = await handler(request)
            return await match.handler(request)

        app.router.add_route("*", "/{tail:.*}", hang_or_pass)
        return app


def test_a_server_that_stops_answering_fails_its_rollouts_quickly(retriever: tuple[FakeRetriever, Served]) -> None:
    # the start-up probes (tools=, priority) are answered, then silence
    stopped = _Stopped(FakeTeacher(TeacherBehaviour()), after=2)
    served = Served(stopped.app())
    try:
        retry = RetryPolicy(attempts=2, backoff=0.01, timeout=600, stall_probe=0.3)
        started = time.monotonic()
        distiller, rows = distill(served, retriever[1], retry=retry)
        elapsed = time.monotonic() - started
    finally:
        served.close()
    assert rows == []
    [failure] = distiller.failures
    assert failure["cause"] == "teacher_stalled" and "stopped answering" in failure["error"]
    assert elapsed < 10  # not the 600 s request timeout
