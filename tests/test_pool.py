"""Several teacher endpoints: least-outstanding routing, sticky rollouts, failover."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import datasets
import pytest

from hfdistill import DistillConfig, Distiller, RetryPolicy
from hfdistill.cli.main import main
from hfdistill.core.errors import ConfigError
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
