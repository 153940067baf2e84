"""Nothing finished is lost: retries, failures file, resume after SIGKILL, SIGINT, reruns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hfdistill.cli.main import main
from tests.conftest import record_of, write_jsonl
from tests.fakes import Answer, FakeRetriever, FakeTeacher, Fault, Say, Search, Served

QS = [f"Question number {i} about France?" for i in range(3)]
FAST = ["--tool-call-mode", "native", "--retry-backoff", "0.05", "--max-retries", "3"]


def _input(tmp_path: Path, n: int = 3) -> Path:
    questions = QS if n == 3 else [f"Question number {i} about France?" for i in range(n)]
    return write_jsonl(tmp_path / "in.jsonl", [{"question": q, "golden_answers": ["Paris"]} for q in questions])


def _generate(inp: Path, out: Path, *extra: str) -> int:
    return main(["generate", "--input_file", str(inp), "--output_file", str(out), *FAST, *extra])


def _failures(out: Path) -> list[dict]:
    path = out.with_name(out.name.replace(".parquet", ".failures.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _keys(out: Path) -> list[tuple[int, int]]:
    table = pq.read_table(out, columns=["input_index", "rollout_index"])
    return list(zip(table["input_index"].to_pylist(), table["rollout_index"].to_pylist(), strict=True))


def test_transient_teacher_failures_are_retried(env: dict[str, str], tmp_path: Path,
                                                teacher: tuple[FakeTeacher, Served],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    fake, _ = teacher
    fake.faults += [Fault(500), Fault(429, retry_after="1"), Fault(drop=True), Fault(503, delay=3.0)]
    out = tmp_path / "o.parquet"
    started = time.monotonic()
    assert _generate(_input(tmp_path, 1), out, "--request-timeout", "1", "--max-retries", "5") == 0
    assert time.monotonic() - started >= 1.0  # Retry-After was honoured
    assert len(fake.requests) == 4 + 2  # four failed attempts, then the two turns
    assert _keys(out) == [(0, 0)]
    assert _failures(out) == []
    assert "teacher calls 2, retried 4" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("status", "body", "cause"),
    [
        pytest.param(400, "invalid request: bad value", "teacher_http_400", id="400"),
        pytest.param(401, "invalid api key", "teacher_http_401", id="401"),
        pytest.param(404, "The model `x` does not exist.", "teacher_http_404", id="404"),
    ],
)
def test_non_transient_errors_are_not_retried(env: dict[str, str], tmp_path: Path,
                                              teacher: tuple[FakeTeacher, Served], status: int, body: str,
                                              cause: str) -> None:
    fake, _ = teacher
    fake.faults.append(Fault(status, body=body))
    out = tmp_path / "o.parquet"
    assert _generate(_input(tmp_path, 1), out) == 3  # incomplete
    assert len(fake.requests) == 1
    [failure] = _failures(out)
    assert failure["cause"] == cause and failure["input_index"] == 0 and failure["turn"] == 1
    assert body in failure["error"]


def test_retrieval_failures_retry_then_fail_into_the_failures_file_and_the_rerun_retries_them(
        env: dict[str, str], tmp_path: Path, teacher: tuple[FakeTeacher, Served],
        retriever: tuple[FakeRetriever, Served], capsys: pytest.CaptureFixture[str]) -> None:
    fake, _ = teacher
    for i, q in enumerate(QS):
        fake.script(q, Search([f"query {i}"]), Answer("Paris"))
    retriever[0].flaky_queries = {"query 0": 2}  # transient: retried away
    retriever[0].fail_queries = {"query 1"}  # a shard that stays down for question 1
    inp, out = _input(tmp_path), tmp_path / "o.parquet"

    assert _generate(inp, out) == 3
    assert _keys(out) == [(0, 0), (2, 0)]
    [failure] = _failures(out)
    assert (failure["input_index"], failure["rollout_index"], failure["cause"]) == (1, 0, "retrieval_http_500")
    assert failure["question"] == QS[1] and "gave up after 4 attempts" in failure["error"]
    err = capsys.readouterr().err
    assert "failed 1 (retrieval_http_500 1)" in err and "rerun the same command" in err
    assert record_of(out).complete is False

    retriever[0].fail_queries = set()
    calls_before = len(fake.requests)
    assert _generate(inp, out) == 0
    assert _keys(out) == [(0, 0), (1, 0), (2, 0)]  # every row exactly once
    assert _failures(out) == []  # and the failures file is gone
    assert len(fake.requests) - calls_before == 2  # only question 1's two turns were generated again


def test_finished_command_is_a_fast_no_op_even_with_servers_down(env: dict[str, str], tmp_path: Path,
                                                                 teacher: tuple[FakeTeacher, Served],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    inp, out = _input(tmp_path), tmp_path / "o.parquet"
    assert _generate(inp, out) == 0
    before = out.stat().st_mtime_ns
    capsys.readouterr()
    assert main(["generate", "--input_file", str(inp), "--output_file", str(out), *FAST,
                 "--vllm_url", "http://127.0.0.1:9/v1"]) == 0
    assert "already complete (3 rows, same input and options); nothing to do" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == before


def test_changed_options_never_mix(env: dict[str, str], tmp_path: Path, teacher: tuple[FakeTeacher, Served],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    inp, out = _input(tmp_path), tmp_path / "o.parquet"
    assert _generate(inp, out) == 0
    capsys.readouterr()
    assert _generate(inp, out, "--temperature", "0.9") == 2
    err = capsys.readouterr().err
    assert "already exists and was made with other options: temperature 0.7 (now 0.9)" in err
    assert "pass --overwrite" in err
    calls = len(teacher[0].requests)
    assert _generate(inp, out, "--temperature", "0.9", "--overwrite") == 0
    assert len(teacher[0].requests) - calls == 6  # everything generated again
    assert {r["temperature"] for r in teacher[0].requests[calls:]} == {0.9}
    runs = sorted(p.name for p in (tmp_path / ".hfdistill").iterdir() if p.is_dir())
    assert len(runs) == 2  # one run directory per set of options


def test_a_run_keeps_its_journal_so_another_keep_filter_costs_nothing(
        env: dict[str, str], tmp_path: Path, teacher: tuple[FakeTeacher, Served],
        capsys: pytest.CaptureFixture[str]) -> None:
    inp, out = _input(tmp_path), tmp_path / "o.parquet"
    teacher[0].script(QS[0], Search(["x"]), Say("no idea"))
    teacher[0].script(QS[1], Search(["x"]), Answer("Lyon"))
    assert _generate(inp, out) == 0
    calls = len(teacher[0].requests)
    capsys.readouterr()
    assert _generate(inp, out, "--keep", "answered") == 0
    assert len(teacher[0].requests) == calls
    err = capsys.readouterr().err
    assert "3 rollouts finished, 2 kept (--keep answered)" in err and "answered 2, exact match 1/3" in err
    assert _keys(out) == [(1, 0), (2, 0)]
    assert _generate(inp, out, "--keep", "correct") == 0
    assert len(teacher[0].requests) == calls
    assert _keys(out) == [(2, 0)]


# ---------------------------------------------------------------- killing a real process


def _spawn(inp: Path, out: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hfdistill", "generate", "--input_file", str(inp),
                             "--output_file", str(out), *FAST, "--concurrency", "4", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})


def _journal(tmp_path: Path) -> Path:
    runs = list((tmp_path / ".hfdistill").glob("*/journal.jsonl"))
    return runs[0] if runs else tmp_path / "missing"


def _recorded_turns(journal: Path) -> int:
    """Turns recorded of rollouts the journal does not hold (a kill can leave them mid-conversation)."""
    done = {(r["k"], r["r"]) for r in map(json.loads, journal.read_bytes().split(b"\n")[:-1])}
    turns = journal.with_name("turns.jsonl")
    if not turns.exists():
        return 0
    recorded = [json.loads(line) for line in turns.read_bytes().split(b"\n")[:-1]]  # whole lines only
    return len({(t["k"], t["r"], t["n"]) for t in recorded if (t["k"], t["r"]) not in done})


def _wait_for_lines(path_of: callable, n: int, proc: subprocess.Popen[str], timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = path_of()
        if path.exists():
            lines = path.read_bytes().count(b"\n")
            if lines >= n:
                return lines
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.02)
    raise AssertionError("the run made no progress")


def test_sigkill_at_any_moment_then_rerun_finishes_exactly_once(env: dict[str, str], tmp_path: Path,
                                                                teacher: tuple[FakeTeacher, Served]) -> None:
    fake, _ = teacher
    fake.behaviour.delay = 0.15
    n = 24
    inp, out = _input(tmp_path, n), tmp_path / "o.parquet"
    proc = _spawn(inp, out, env)
    _wait_for_lines(lambda: _journal(tmp_path), 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert not out.exists()  # no partial output, ever
    journaled = _journal(tmp_path).read_bytes().count(b"\n")
    assert 6 <= journaled < n
    resumed_turns = _recorded_turns(_journal(tmp_path))

    fake.behaviour.delay = 0.0
    calls = len(fake.requests)
    assert _generate(inp, out, "--concurrency", "4") == 0
    assert sorted(_keys(out)) == [(i, 0) for i in range(n)]  # each exactly once
    # journaled rollouts were not sent again: only the rest, two turns each, less the turns
    # recorded of those in flight at the kill (they go on from there)
    assert len(fake.requests) - calls == 2 * (n - journaled) - resumed_turns


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_finishes_in_flight_rollouts_and_says_how_to_resume(env: dict[str, str], tmp_path: Path,
                                                                     teacher: tuple[FakeTeacher, Served],
                                                                     signum: int) -> None:
    fake, _ = teacher
    fake.hold = threading.Event()  # no rollout can finish, so none can start, until the test says so
    n = 24
    inp, out = _input(tmp_path, n), tmp_path / "o.parquet"
    proc = _spawn(inp, out, env)  # a window of 4
    deadline = time.monotonic() + 60
    while len({q for _, kind, q in fake.events if kind == "start"}) < 4:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.02)
    started = {q for _, kind, q in fake.events if kind == "start"}
    proc.send_signal(signum)
    assert proc.stderr is not None
    seen = []
    while not seen or "finishing the rollouts in flight" not in seen[-1]:  # the stop is acknowledged
        seen.append(proc.stderr.readline())
        assert seen[-1], "".join(seen)
    fake.hold.set()  # the window drains: without the stop, new rollouts would start now
    _, err = proc.communicate(timeout=30)
    err = "".join(seen) + err
    assert proc.returncode == 130
    assert "rerun the same command to resume" in err.splitlines()[-1]
    assert "Traceback" not in err
    assert not out.exists()
    # nothing new started after the signal, and everything that started was finished and recorded
    assert {q for _, kind, q in fake.events if kind == "start"} == started
    recorded = {json.loads(line)["q"] for line in _journal(tmp_path).read_text().splitlines()}
    assert recorded == started and len(recorded) < n


def test_second_ctrl_c_stops_at_once(env: dict[str, str], tmp_path: Path,
                                     teacher: tuple[FakeTeacher, Served]) -> None:
    teacher[0].behaviour.delay = 30.0  # in-flight rollouts would take long to drain
    inp, out = _input(tmp_path, 8), tmp_path / "o.parquet"
    proc = _spawn(inp, out, env)
    deadline = time.monotonic() + 30
    while not teacher[0].requests and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, err = proc.communicate(timeout=15)
    assert time.monotonic() - started < 10
    assert proc.returncode == 130
    assert "stopped at once" in err
    assert "Traceback" not in err


def test_a_teacher_that_dies_mid_run_fails_rows_not_the_run_and_a_moved_one_resumes(
        env: dict[str, str], tmp_path: Path, teacher: tuple[FakeTeacher, Served],
        retriever: tuple[FakeRetriever, Served], capsys: pytest.CaptureFixture[str]) -> None:
    fake, served = teacher
    fake.behaviour.delay = 0.02
    n = 12
    inp, out = _input(tmp_path, n), tmp_path / "o.parquet"

    def die(_body: dict) -> None:
        if len(fake.requests) == 8:
            threading.Thread(target=served.close).start()

    fake.on_request = die
    assert _generate(inp, out, "--concurrency", "3", "--max-retries", "2") == 3
    done, failed = _keys(out), [(f["input_index"], f["rollout_index"]) for f in _failures(out)]
    # a rollout that failed at turn 2 had finished turn 1, which the rerun continues from
    owed = sum(2 - (f["turn"] - 1) for f in _failures(out))
    assert done and failed
    assert sorted(done + failed) == [(i, 0) for i in range(n)]  # every row in one place, exactly once
    assert {f["cause"] for f in _failures(out)} == {"teacher_connection"}
    assert "gave up after 3 attempts" in _failures(out)[0]["error"]
    assert "the run is incomplete" in capsys.readouterr().err

    # the teacher comes back elsewhere: URLs are not part of the run's identity, so it resumes
    again = FakeTeacher()
    moved = Served(again.app())
    try:
        assert main(["generate", "--input_file", str(inp), "--output_file", str(out), *FAST,
                     "--vllm_url", f"{moved.url}/v1"]) == 0
    finally:
        moved.close()
    assert _keys(out) == [(i, 0) for i in range(n)]
    assert _failures(out) == []
    assert again.chat_calls == owed < 2 * len(failed)  # only the failed rollouts' unfinished turns
