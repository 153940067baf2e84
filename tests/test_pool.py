"""Several teacher endpoints: least-outstanding routing, sticky rollouts, failover."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pytest

from hfdistill import DistillConfig, Distiller, RetryPolicy
from hfdistill.cli.main import main
from hfdistill.core.errors import ConfigError, TeacherError
from hfdistill.teacher.client import Teacher
from hfdistill.teacher.lifecycle import GONE, RESTARTING, UP, ServerStates
from hfdistill.teacher.pool import Endpoint, EndpointPool, Route
from tests.conftest import write_jsonl
from tests.fakes import FakeRetriever, FakeTeacher, Served, TeacherBehaviour


@pytest.fixture
def two_teachers() -> Iterator[list[tuple[FakeTeacher, Served]]]:
    pairs = []
    for _ in range(2):
        fake = FakeTeacher(TeacherBehaviour())
        pairs.append((fake, Served(fake.app())))
    yield pairs
    for _, served in pairs:
        served.close()


def _run(urls: list[str], retriever: Served, n: int, **kw: object) -> tuple[Distiller, list[dict]]:
    ds = datasets.Dataset.from_list([{"question": f"Question number {i}?"} for i in range(n)])
    config = DistillConfig(vllm_url=",".join(f"{u}/v1" for u in urls), retrieval_url=f"{retriever.url}/retrieve",
                           tool_call_mode="native", **kw)
    distiller = Distiller(config)
    return distiller, distiller.map(ds, batch_size=4).to_list()


def _questions(fake: FakeTeacher) -> set[str]:
    return {m["content"] for r in fake.requests for m in r["messages"] if m["role"] == "user"}


def test_both_endpoints_share_the_work_and_rollouts_stick(two_teachers: list[tuple[FakeTeacher, Served]],
                                                          retriever: tuple[FakeRetriever, Served]) -> None:
    for fake, _ in two_teachers:
        fake.behaviour.delay = 0.05
    distiller, rows = _run([s.url for _, s in two_teachers], retriever[1], 40, concurrency=8)
    assert len(rows) == 40 and not distiller.failures
    a, b = (fake for fake, _ in two_teachers)
    # least outstanding requests: equal servers never differ by more than the window's conversations
    assert abs(len(_questions(a)) - len(_questions(b))) <= 8
    # every conversation's turns went to one server, so its prefix cache is reused
    assert not _questions(a) & _questions(b)
    assert len(_questions(a) | _questions(b)) == 40


def test_least_outstanding_sends_more_to_the_faster_server(two_teachers: list[tuple[FakeTeacher, Served]],
                                                            retriever: tuple[FakeRetriever, Served]) -> None:
    slow, fast = (fake for fake, _ in two_teachers)
    slow.behaviour.delay, fast.behaviour.delay = 0.3, 0.01
    _run([s.url for _, s in two_teachers], retriever[1], 40, concurrency=6)
    assert len(_questions(fast)) > 2 * len(_questions(slow))


def test_an_endpoint_that_dies_is_taken_out_and_its_rollouts_continue_elsewhere(
        two_teachers: list[tuple[FakeTeacher, Served]], retriever: tuple[FakeRetriever, Served]) -> None:
    (alive, _), (dying, dying_served) = two_teachers
    alive.behaviour.delay = dying.behaviour.delay = 0.05
    killed = threading.Event()

    def kill_after_some(_body: dict) -> None:
        if len(dying.requests) == 10 and not killed.is_set():
            killed.set()
            threading.Thread(target=dying_served.close).start()

    dying.on_request = kill_after_some
    distiller, rows = _run([two_teachers[0][1].url, dying_served.url], retriever[1], 30, concurrency=8,
                     retry=RetryPolicy(attempts=4, backoff=0.05))
    assert killed.is_set()
    assert len(rows) == 30 and not distiller.failures
    # conversations that had started on the dying server were finished by the other one, whole
    moved = _questions(dying) & _questions(alive)
    assert moved
    for row in rows:
        assert row["stop_reason"] == "answer"


def test_endpoints_must_serve_the_same_model(retriever: tuple[FakeRetriever, Served]) -> None:
    a, b = FakeTeacher(model="model-a"), FakeTeacher(model="model-b")
    sa, sb = Served(a.app()), Served(b.app())
    try:
        with pytest.raises(ConfigError, match=r"serve different models .* pass --model"):
            _run([sa.url, sb.url], retriever[1], 1)
        with pytest.raises(ConfigError, match=r"model 'model-a' is not served at .*; fix --model or VLLM_URL"):
            _run([sa.url, sb.url], retriever[1], 1, model="model-a")
    finally:
        sa.close()
        sb.close()


def test_the_summary_counts_calls_per_endpoint(two_teachers: list[tuple[FakeTeacher, Served]],
                                               retriever: tuple[FakeRetriever, Served], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"question": f"Question number {i}?"} for i in range(12)])
    urls = ",".join(f"{s.url}/v1" for _, s in two_teachers)
    assert main(["generate", "--vllm_url", urls, "--retrieval_url", f"{retriever[1].url}/retrieve",
                 "--input_file", str(inp), "--output_file", str(tmp_path / "o.parquet"),
                 "--tool-call-mode", "native"]) == 0
    err = capsys.readouterr().err
    counts = [fake.chat_calls for fake, _ in two_teachers]
    hosts = sorted(f"127.0.0.1:{s.port} {n}" for (_, s), n in zip(two_teachers, counts, strict=True))
    assert f"teacher calls {sum(counts)} ({hosts[0]}, {hosts[1]}), retried 0" in err
    assert all(counts)


# ---------------------------------------------------------------- servers hfdistill runs (--serve), near servers


def _pool(states: ServerStates | None = None, near: tuple[str, ...] = ()) -> EndpointPool:
    return EndpointPool([Endpoint.at("http://a:8000/v1"), Endpoint.at("http://b:8000/v1")], states, near)


@pytest.mark.parametrize(("a", "b", "picked"), [
    pytest.param(UP, UP, "http://a:8000/v1", id="both-up-least-outstanding"),
    pytest.param(RESTARTING, UP, "http://b:8000/v1", id="restarting-skipped"),
    pytest.param(GONE, UP, "http://b:8000/v1", id="gone-skipped"),
    pytest.param(RESTARTING, GONE, "http://a:8000/v1", id="none-up-wait-for-the-restarting-one"),
])
def test_a_server_being_restarted_takes_no_new_turn_while_another_is_up(a: str, b: str, picked: str) -> None:
    states = ServerStates()
    states.set("http://a:8000/v1", a)
    states.set("http://b:8000/v1", b)
    assert _pool(states).pick(Route()).url == picked


def test_a_route_leaves_its_server_when_it_is_restarted_and_sticks_to_the_new_one() -> None:
    states = ServerStates()
    pool = _pool(states)
    route = Route()
    first = pool.pick(route)
    states.set(first.url, RESTARTING)
    second = pool.pick(route)
    assert second is not first
    states.set(first.url, UP)
    assert pool.pick(route) is second


def test_near_servers_first_the_others_only_while_none_is_up() -> None:
    states = ServerStates()
    pool = _pool(states, near=("http://b:8000/v1",))
    far, near = pool.endpoints
    near.outstanding = 50  # busier than the far one, and still preferred
    assert pool.pick(Route()) is near
    states.set(near.url, RESTARTING)
    assert pool.pick(Route()) is far
    states.set(near.url, UP)
    near.down_until = time.monotonic() + 30  # cooling down after a failure
    assert pool.pick(Route()) is far


def test_a_turn_waits_for_a_restart_without_spending_retries(retriever: tuple[FakeRetriever, Served]) -> None:
    fake = FakeTeacher(TeacherBehaviour())
    served = Served(fake.app())
    url = f"{served.url}/v1"
    states = ServerStates()
    states.set(url, RESTARTING)
    config = DistillConfig(vllm_url=url, retrieval_url=f"{retriever[1].url}/retrieve", tool_call_mode="native",
                           priority="off", retry=RetryPolicy(attempts=1))
    teacher = Teacher(config, [], states=states)
    timer = threading.Timer(1.5, states.set, (url, UP))
    timer.start()
    try:
        started = time.monotonic()
        reply = asyncio.run(_one_turn(teacher))
        waited = time.monotonic() - started
    finally:
        timer.cancel()
        served.close()
    assert reply.finish_reason == "tool_calls" and 1.4 < waited < 5
    assert teacher.stats.retries == 0 and len(fake.requests) == 1


def test_a_turn_on_a_server_given_up_fails_for_good(retriever: tuple[FakeRetriever, Served]) -> None:
    states = ServerStates()
    states.set("http://127.0.0.1:9/v1", GONE, "vllm-0 died 4 times")
    config = DistillConfig(vllm_url="http://127.0.0.1:9/v1", retrieval_url=f"{retriever[1].url}/retrieve",
                           tool_call_mode="native")
    with pytest.raises(TeacherError, match="is gone: vllm-0 died 4 times") as failed:
        asyncio.run(_one_turn(Teacher(config, [], states=states)))
    assert failed.value.cause == "teacher_gone" and not failed.value.transient


async def _one_turn(teacher: Teacher) -> Any:
    try:
        return await teacher.chat([{"role": "user", "content": "Question: What is the capital of France?"}], Route())
    finally:
        await teacher.aclose()
