"""Every server fault is a retried, named outcome: `generate` against the scripted teacher, hfdistill's own BM25
retrieval server and the scripted judge, each behind a proxy that breaks their replies (tests/fault_proxy.py).

For each fault kind: no traceback, every input once (a row or a failure), transient faults retried until the
rows equal a clean run's, a fault that outlasts the retries named by server and fault; a server that answers
nothing but faults stops the run at start-up in one line; 8 % faults of every kind on both servers change
nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from hfdistill.cli.main import main
from hfdistill.retrieval.bm25 import BM25Retriever
from hfdistill.retrieval.server import make_app
from tests.corpus_util import CITIES, write_jsonl
from tests.fake_judge import FakeJudge
from tests.fakes import Answer, FakeTeacher, Search, Served, TeacherBehaviour
from tests.fault_proxy import KINDS, FaultProxy

CAPITALS = {"France": "Paris", "Germany": "Berlin", "Spain": "Madrid", "Japan": "Kyoto"}
QUESTIONS = {f"What is the capital of {country}?": city for country, city in CAPITALS.items()}
# Small backoffs, a short timeout (the `hang` fault waits past it), few retries: each fault is met once.
FAST = ["--retry-backoff", "0.01", "--max-retries", "2", "--request-timeout", "1", "--tool-call-mode", "auto"]
# What a fault that outlasts the retries is named (a rate limit waits instead, up to RetryPolicy.throttle_wait:
# tests/test_retry.py).
CAUSE = {"reset": "connection", "cut": "payload", "hang": "timeout", "html_5xx": "http_502",
         "html_200": "bad_response", "wrong_shape": "bad_response"}
BAD_REPLIES = ["html_5xx", "html_200", "wrong_shape"]


def _script(teacher: FakeTeacher, questions: dict[str, str], searches: int = 1) -> None:
    for i, (question, city) in enumerate(questions.items()):
        steps = [Search([f"capital {city} {i} {n}"]) for n in range(searches)]
        teacher.script(question, *steps, Answer(city))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeTeacher, Served, Served]]:
    """A deterministic teacher and a real BM25 retrieval server, shared by the module's runs."""
    teacher = FakeTeacher(TeacherBehaviour(stable=True))
    _script(teacher, QUESTIONS)
    retriever = BM25Retriever.load(write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", CITIES))
    served = Served(teacher.app()), Served(make_app(retriever))
    yield teacher, *served
    for server in served:
        server.close()
    retriever.close()


@pytest.fixture(scope="module")
def clean(servers: tuple[FakeTeacher, Served, Served], tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The rows of a run without faults."""
    tmp = tmp_path_factory.mktemp("clean")
    rc, out = _generate(tmp, f"{servers[1].url}/v1", f"{servers[2].url}/retrieve")
    assert rc == 0
    return _rows(out)


def _input(tmp: Path, questions: dict[str, str]) -> Path:
    return write_jsonl(tmp / "in.jsonl", [{"question": q, "golden_answers": [a]} for q, a in questions.items()])


def _generate(tmp: Path, teacher: str, retrieval: str, *extra: str,
              questions: dict[str, str] = QUESTIONS) -> tuple[int, Path]:
    out = tmp / "out.parquet"
    argv = ["generate", "--vllm_url", teacher, "--retrieval_url", retrieval,
            "--input_file", str(_input(tmp, questions)), "--output_file", str(out), "-q", *FAST, *extra]
    return main(argv), out


def _rows(out: Path) -> list[dict[str, Any]]:
    return sorted(pq.read_table(out).to_pylist(), key=lambda r: (r["input_index"], r["rollout_index"]))


def _failures(out: Path) -> list[dict[str, Any]]:
    path = out.with_name("out.failures.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _quiet(err: str) -> None:
    for sign in ("Traceback", "internal error", "Unclosed", "never retrieved"):
        assert sign not in err, err


def _proxy(upstream: Served, kinds: list[str], **options: Any) -> tuple[FaultProxy, Served]:
    proxy = FaultProxy(upstream.url, kinds, hang=5.0, **options)
    return proxy, proxy.serve()


# ---------------------------------------------------------------- one fault kind at a time


@pytest.mark.parametrize("server", ["teacher", "retrieval"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_fault_once_per_request_is_retried_and_the_rows_are_a_clean_runs(
        servers: tuple[FakeTeacher, Served, Served], clean: list[dict], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], server: str, kind: str) -> None:
    _, teacher, retrieval = servers
    proxy, front = _proxy(teacher if server == "teacher" else retrieval, [kind])  # every request broken once
    teacher_url, retrieval_url = f"{teacher.url}/v1", f"{retrieval.url}/retrieve"
    try:
        if server == "teacher":
            teacher_url = f"{front.url}/v1"
        else:
            retrieval_url = f"{front.url}/retrieve"
        # a rate limit waits for the server and spends no retry: it passes with no retries at all
        extra = ["--max-retries", "0"] if kind == "throttle" else []
        rc, out = _generate(tmp_path, teacher_url, retrieval_url, *extra)
    finally:
        front.close()
    _quiet(capsys.readouterr().err)
    assert rc == 0
    assert _rows(out) == clean and _failures(out) == []
    assert proxy.injected[kind] >= len(QUESTIONS)  # every request (probes included) was broken, then retried


@pytest.mark.parametrize("server", ["teacher", "retrieval"])
@pytest.mark.parametrize("kind", list(CAUSE))
def test_a_fault_that_outlasts_the_retries_fails_its_rollout_named_by_server_and_fault(
        servers: tuple[FakeTeacher, Served, Served], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        server: str, kind: str) -> None:
    _, teacher, retrieval = servers
    # Spain's requests only, every time: the probes and the other questions go through
    only = b"capital of Spain?" if server == "teacher" else b"capital Madrid 2"
    proxy, front = _proxy(teacher if server == "teacher" else retrieval, [kind], per_request=None, only=only)
    try:
        urls = (f"{front.url}/v1", f"{retrieval.url}/retrieve") if server == "teacher" else \
            (f"{teacher.url}/v1", f"{front.url}/retrieve")
        rc, out = _generate(tmp_path, *urls)
    finally:
        front.close()
    err = capsys.readouterr().err
    _quiet(err)
    assert rc == 3  # finished, with a failure a rerun retries
    rows, [failure] = _rows(out), _failures(out)
    assert sorted([r["input_index"] for r in rows] + [failure["input_index"]]) == list(range(len(QUESTIONS)))
    assert failure["question"] == "What is the capital of Spain?"
    assert failure["cause"] == f"{server}_{CAUSE[kind]}"
    assert front.url in failure["error"] and "gave up after 3 attempts" in failure["error"]
    assert "\n" not in failure["error"]
    assert proxy.injected[kind] == 3


@pytest.mark.parametrize("kind", KINDS)
def test_each_judge_fault_once_per_request_is_retried_and_every_row_judged(
        servers: tuple[FakeTeacher, Served, Served], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        kind: str) -> None:
    _, teacher, retrieval = servers
    judge = FakeJudge()
    upstream = Served(judge.app())
    proxy, front = _proxy(upstream, [kind])
    try:
        extra = ["--max-retries", "0"] if kind == "throttle" else []
        rc, out = _generate(tmp_path, f"{teacher.url}/v1", f"{retrieval.url}/retrieve", "--judge-url",
                            f"{front.url}/v1", *extra)
    finally:
        front.close()
        upstream.close()
    _quiet(capsys.readouterr().err)
    assert rc == 0
    rows = _rows(out)
    assert len(rows) == len(QUESTIONS) and all(r["judge_correct"] is not None for r in rows)
    # each answered once after one broken try (a reply cut short was answered, then lost on the way)
    assert judge.calls == len(QUESTIONS) * (2 if kind == "cut" else 1)
    assert proxy.injected[kind] == len(QUESTIONS) + 1  # and the start-up probe's model list


# ---------------------------------------------------------------- nothing but bad replies


@pytest.mark.parametrize("server", ["teacher", "retrieval", "judge"])
@pytest.mark.parametrize("kind", BAD_REPLIES)
def test_a_server_answering_only_bad_replies_stops_the_run_at_start_up_in_one_line(
        servers: tuple[FakeTeacher, Served, Served], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        server: str, kind: str) -> None:
    fake, teacher, retrieval = servers
    judge = Served(FakeJudge().app())
    upstream = {"teacher": teacher, "retrieval": retrieval, "judge": judge}[server]
    proxy, front = _proxy(upstream, [kind], per_request=None)
    urls = {"teacher": f"{teacher.url}/v1", "retrieval": f"{retrieval.url}/retrieve", "judge": f"{judge.url}/v1"}
    urls[server] = f"{front.url}{'/retrieve' if server == 'retrieval' else '/v1'}"
    rollouts = len(fake.requests)
    try:
        rc, out = _generate(tmp_path, urls["teacher"], urls["retrieval"], "--judge-url", urls["judge"])
    finally:
        front.close()
        judge.close()
    err = capsys.readouterr().err
    _quiet(err)
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert urls[server] in lines[0] and "gave up after 3 attempts" in lines[0]
    assert len(fake.requests) == rollouts and not out.exists()  # before any rollout
    assert proxy.injected[kind] == 3


# ---------------------------------------------------------------- everything at once


def test_eight_percent_faults_of_every_kind_on_both_servers_change_nothing(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    questions = {f"Question {i}: what is the capital of {c}?": city
                 for i in range(25) for c, city in CAPITALS.items() if (i + len(c)) % 2 == 0}
    teacher = FakeTeacher(TeacherBehaviour(stable=True))
    _script(teacher, questions, searches=2)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", CITIES)
    retriever = BM25Retriever.load(corpus)
    teacher_server, retrieval_server = Served(teacher.app()), Served(make_app(retriever))
    broken_teacher, front_teacher = _proxy(teacher_server, KINDS, rate=0.08, per_request=2)
    broken_retrieval, front_retrieval = _proxy(retrieval_server, KINDS, rate=0.08, per_request=2)
    try:
        (tmp_path / "clean").mkdir()
        (tmp_path / "faulty").mkdir()
        rc_clean, clean = _generate(tmp_path / "clean", f"{teacher_server.url}/v1",
                                    f"{retrieval_server.url}/retrieve", "--max-retries", "4", questions=questions)
        rc, out = _generate(tmp_path / "faulty", f"{front_teacher.url}/v1", f"{front_retrieval.url}/retrieve",
                            "--max-retries", "4", questions=questions)
    finally:
        for server in (front_teacher, front_retrieval, teacher_server, retrieval_server):
            server.close()
        retriever.close()
    _quiet(capsys.readouterr().err)
    assert (rc_clean, rc) == (0, 0)
    assert _rows(out) == _rows(clean) and len(_rows(out)) == len(questions)
    assert set(broken_teacher.injected) == set(broken_retrieval.injected) == set(KINDS)  # every kind, on both
    for proxy in (broken_teacher, broken_retrieval):
        share = sum(proxy.injected.values()) / (sum(proxy.injected.values()) + proxy.forwarded)
        assert 0.06 < share < 0.10, (proxy.injected, proxy.forwarded)
