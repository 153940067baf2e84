"""vLLM request priorities: continuing conversations are sent with a lower (earlier-served) priority than
new ones; a server on vLLM's default fcfs policy, or a hosted endpoint that does not know the field, refuses
them: it is found at start-up and sent none (`--priority auto`), or fails the run before it starts
(`--priority on`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hfdistill.cli.main import main
from tests.conftest import write_jsonl
from tests.fakes import FakeTeacher, Served

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sim_vllm  # the benchmark's simulator schedules by priority like vLLM

QUESTIONS = [sim_vllm.make_question(i) for i in range(60)]  # many second turns at once: refusals race
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Recorded:
    """A simulated vLLM with the given scheduling policy that keeps every chat request body."""

    def __init__(self, policy: str, fcfs_after_probe: bool = False) -> None:
        self.bodies: list[dict[str, Any]] = []
        app = sim_vllm.make_app(sim_vllm.SimConfig(slots=4, prefill=0, prefill_per_1k=0, tpot=0,
                                                   scheduling_policy=policy))

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path.endswith("/chat/completions"):
                self.bodies.append(await request.json())
                if fcfs_after_probe and self.bodies[-1].get("max_tokens") != 1:  # restarted as fcfs, say
                    self.state.config.scheduling_policy = "fcfs"
            return await handler(request)

        app.middlewares.append(record)
        self.state = app[sim_vllm.STATE]
        self.served = Served(app)

    def chats(self) -> list[dict[str, Any]]:
        """Rollout requests (the protocol probe sends a single user message and max_tokens 1)."""
        return [b for b in self.bodies if b.get("max_tokens") != 1]


@pytest.fixture(params=["fcfs", "priority"])
def server(request: pytest.FixtureRequest) -> Iterator[Recorded]:
    recorded = Recorded(request.param)
    yield recorded
    recorded.served.close()


def _generate(server: Recorded, retrieval: str, tmp_path: Path, *args: str) -> int:
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": q} for q in QUESTIONS])
    return main(["generate", "-q", "--vllm_url", f"{server.served.url}/v1", "--retrieval_url", retrieval,
                 "--input_file", str(data), "--output_file", str(tmp_path / "out.parquet"),
                 "--max_assistant_turns", "10", *args])


def _turn(body: dict[str, Any]) -> int:
    return sum(m["role"] == "assistant" for m in body["messages"]) + 1


def test_auto_sends_continuing_turns_first_and_asks_a_server_once_whether_it_takes_them(
        server: Recorded, env: dict[str, str], tmp_path: Path) -> None:
    assert _generate(server, env["RETRIEVAL_URL"], tmp_path) == 0
    chats = server.chats()
    assert max(map(_turn, chats)) > 2  # some conversations went on for several turns
    if server.state.config.scheduling_policy == "priority":
        assert all(b.get("priority", 0) == 1 - _turn(b) for b in chats)
        assert server.state.counters.errors == 0
    else:  # the start-up probe was refused (vLLM's 400), and no rollout request carried a priority
        assert not any("priority" in b for b in chats)
        assert server.state.counters.errors == 1
    assert not (tmp_path / "out.failures.jsonl").exists()


def test_a_server_that_stops_taking_priorities_mid_run_is_sent_none_after_its_first_refusal(
        env: dict[str, str], tmp_path: Path) -> None:
    server = Recorded("priority", fcfs_after_probe=True)
    try:
        assert _generate(server, env["RETRIEVAL_URL"], tmp_path) == 0
    finally:
        server.served.close()
    chats = server.chats()
    refused = [b for b in chats if "priority" in b]  # refused until the first refusal came back
    assert 1 <= len(refused) == server.state.counters.errors
    resent = [b["messages"] for b in chats if "priority" not in b]
    assert all(b["messages"] in resent for b in refused)  # each refused turn was sent again without it
    assert len({json.dumps(b["messages"]) for b in refused}) == len(refused)  # each turn refused once only
    assert not (tmp_path / "out.failures.jsonl").exists()


def test_off_never_sends_a_priority(server: Recorded, env: dict[str, str], tmp_path: Path) -> None:
    assert _generate(server, env["RETRIEVAL_URL"], tmp_path, "--priority", "off") == 0
    assert server.chats() and not any("priority" in b for b in server.chats())


def test_on_against_a_fcfs_server_fails_before_any_rollout_with_the_fix(
        server: Recorded, env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = _generate(server, env["RETRIEVAL_URL"], tmp_path, "--priority", "on")
    if server.state.config.scheduling_policy == "priority":
        assert code == 0
        return
    assert code == 2 and not server.chats()  # a usage error, found by the start-up probe
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--scheduling-policy priority" in error[0] and "Traceback" not in error[0]


# ---------------------------------------------------------------- a hosted endpoint (any OpenAI-compatible URL)

UNRECOGNIZED = "Unrecognized request argument supplied: {}"  # OpenAI's wording, not vLLM's


class Hosted:
    """The scripted teacher behind an endpoint that refuses request fields it does not know, in its own words."""

    def __init__(self, refused: set[str]) -> None:
        self.fake = FakeTeacher()
        self.refusals: list[str] = []
        app = self.fake.app()

        @web.middleware
        async def strict(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path.endswith("/chat/completions"):
                unknown = sorted(refused & set(await request.json()))
                if unknown:
                    self.refusals.append(unknown[0])
                    return web.json_response({"error": {"message": UNRECOGNIZED.format(unknown[0]), "type":
                                                        "invalid_request_error", "param": None, "code": None}},
                                             status=400)
            return await handler(request)

        app.middlewares.append(strict)
        self.served = Served(app)


@pytest.fixture
def hosted() -> Iterator[Hosted]:
    endpoint = Hosted({"priority", "tools"})
    yield endpoint
    endpoint.served.close()


def test_auto_finds_a_refused_field_whatever_its_wording_and_stops_sending_it(
        hosted: Hosted, env: dict[str, str], tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": f"Question {i} about France?"} for i in range(8)])
    assert main(["generate", "-q", "--vllm_url", f"{hosted.served.url}/v1", "--api-key", "sk-hosted",
                 "--input_file", str(data), "--output_file", str(tmp_path / "out.parquet")]) == 0
    assert hosted.refusals == ["tools", "priority"]  # each asked once, by the start-up probe
    chats = hosted.fake.requests
    assert len(chats) == 16 and not any("priority" in b or "tools" in b for b in chats)  # text protocol, no priority
    assert not (tmp_path / "out.failures.jsonl").exists()


def test_on_against_an_endpoint_that_refuses_the_field_is_one_line_before_any_rollout(
        hosted: Hosted, env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": "Who?"}])
    code = main(["generate", "-q", "--vllm_url", f"{hosted.served.url}/v1", "--priority", "on",
                 "--input_file", str(data), "--output_file", str(tmp_path / "out.parquet")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not hosted.fake.requests
    assert len(error) == 1 and error[0].startswith("error: --priority on needs a teacher that schedules by priority")
    assert hosted.served.url in error[0] and UNRECOGNIZED.format("priority") in error[0]
