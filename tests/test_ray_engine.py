"""`--engine ray` on a real two-node Ray cluster on loopback, against the benchmark's simulated vLLM.

The same command as a local run gives the same rows; a raylet killed at ~30 % of the teacher calls,
or a driver killed mid-run, still ends with every row exactly once; bad input fails before any
actor starts, with the local run's one-line errors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import record_of
from tests.corpus_util import write_jsonl
from tests.fake_judge import FakeJudge
from tests.fakes import Answer, CallTool, FakeTeacher, Served
from tests.mcp_servers import calls, stdio_command
from tests.ray_cluster import ENV, Cluster
from tests.simulators import simulators as simulators_running
from tests.simulators import teacher_calls
from tests.verl_rules import check_output

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import sim_vllm  # noqa: E402 - the benchmark's simulator names its questions

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
QUESTIONS = 300
KILL_AT = 0.30
GOAL = 1.5
# A lost node loses the turns its actors made since their last report to the turn store (and what they
# finish before their workers notice the raylet is gone, a few seconds on this machine). The default
# window (512) puts all 300 rollouts of this small input in flight at once: the hardest case.
WINDOW = ("--engine", "ray", "--batch_size", "8")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def second_node(cluster: Cluster) -> Iterator[int]:
    """A second raylet joined for one test (a test may kill it); returns its node manager port."""
    port = cluster.add_node()
    yield port
    cluster.remove_node(port)


@pytest.fixture(scope="module")
def simulators() -> Iterator[tuple[str, str]]:
    with simulators_running() as urls:
        yield urls


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    questions = [sim_vllm.make_question(i) for i in range(QUESTIONS)]
    golden = [[sim_vllm.golden_answer_for(sim_vllm.question_key(q))] for q in questions]
    path = tmp_path_factory.mktemp("input") / "questions.parquet"
    pq.write_table(pa.table({"question": questions, "golden_answers": golden}), path)
    return path


def _generate(out: Path, servers: tuple[str, str], workload: Path, *args: str,
              ray_address: str | None = None) -> subprocess.Popen[str]:
    env = {**ENV, "VLLM_URL": f"{servers[0]}/v1", "RETRIEVAL_URL": servers[1], "INPUT_FILE": str(workload),
           "OUTPUT_FILE": str(out), "MAX_ASSISTANT_TURNS": "10"}
    env.pop("RAY_ADDRESS", None)
    if ray_address is not None:
        env["RAY_ADDRESS"] = ray_address
    return subprocess.Popen([sys.executable, "-m", "hfdistill", "generate", "-q", *args], env=env, text=True,
                            stderr=subprocess.PIPE, cwd=out.parent)


def _finish(proc: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _rows(out: Path) -> list[dict[str, Any]]:
    table = pq.read_table(out)
    return sorted(table.to_pylist(), key=lambda r: (r["input_index"], r["rollout_index"]))


def _comparable(row: dict[str, Any]) -> dict[str, Any]:
    """A row without what depends on the order in which the server saw requests (its tool-call ids)."""
    messages = [{k: v for k, v in m.items() if k not in ("tool_calls", "tool_call_id")} for m in row["messages"]]
    return {**{k: v for k, v in row.items() if k != "messages"}, "messages": messages}


def _expected_calls() -> int:
    """The teacher calls a clean run of the workload makes (the simulator's script decides them)."""
    keys = (sim_vllm.question_key(sim_vllm.make_question(i)) for i in range(QUESTIONS))
    return int(sim_vllm.workload_stats(keys, sim_vllm.SimConfig())["teacher_calls"])


def _out(tmp_path: Path, name: str) -> Path:
    (tmp_path / name).mkdir()
    return tmp_path / name / "out.parquet"


def test_a_ray_run_in_parts_writes_the_local_runs_rows(cluster: Cluster, second_node: int, simulators: tuple[str, str],
                                             workload: Path, tmp_path: Path) -> None:
    local, ray = _out(tmp_path, "local"), _out(tmp_path, "ray")
    code, err = _finish(_generate(local, simulators, workload, "--num_rollouts", "2"))
    assert code == 0, err
    # A window of 8 sends the 600 rollouts to the cluster in two parts (run_on_ray: 64 windows a part).
    code, err = _finish(_generate(ray, simulators, workload, "--num_rollouts", "2", "--engine", "ray",
                                  "--concurrency", "8", ray_address=cluster.address))
    assert code == 0, err
    assert [_comparable(r) for r in _rows(ray)] == [_comparable(r) for r in _rows(local)]
    assert [(r["input_index"], r["rollout_index"]) for r in _rows(ray)] == [
        (i, k) for i in range(QUESTIONS) for k in range(2)]
    check_output(ray)  # every verl rule
    record = record_of(ray)
    assert record.complete and record.rows == 2 * QUESTIONS
    assert record.counts.teacher_calls == record_of(local).counts.teacher_calls
    assert not (ray.parent / "out.failures.jsonl").exists()


def test_a_raylet_killed_at_30_percent_loses_no_row_and_little_work(
        cluster: Cluster, second_node: int, simulators: tuple[str, str], workload: Path, tmp_path: Path) -> None:
    vllm_url = simulators[0]
    before = teacher_calls(vllm_url)
    clean = _out(tmp_path, "clean")
    code, err = _finish(_generate(clean, simulators, workload))
    assert code == 0, err
    clean_calls = teacher_calls(vllm_url) - before

    killed = _out(tmp_path, "killed")
    start = teacher_calls(vllm_url)
    proc = _generate(killed, simulators, workload, *WINDOW, ray_address=cluster.address)
    deadline = time.monotonic() + 300
    while teacher_calls(vllm_url) - start < KILL_AT * clean_calls:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the run made too few teacher calls in 5 minutes"
        time.sleep(0.02)
    os.kill(cluster.raylet_pid(second_node), signal.SIGKILL)
    at_kill = teacher_calls(vllm_url) - start
    code, err = _finish(proc)
    runs = 1
    if code == 3:  # rollouts that failed for good are retried by the same command, as in a local run
        code, err = _finish(_generate(killed, simulators, workload, *WINDOW, ray_address=cluster.address))
        runs = 2
    assert code == 0, err
    total = teacher_calls(vllm_url) - start
    assert [(r["input_index"], r["rollout_index"]) for r in _rows(killed)] == [(i, 0) for i in range(QUESTIONS)]
    assert [_comparable(r) for r in _rows(killed)] == [_comparable(r) for r in _rows(clean)]
    ratio = total / clean_calls
    counted = record_of(killed).counts.teacher_calls
    print(f"\nclean run {clean_calls} teacher calls; raylet killed at {at_kill} ({at_kill / clean_calls:.0%}); "
          f"{runs} run(s) made {total} = {ratio:.3f}x; the summary counts {counted}")
    assert ratio <= GOAL


def test_a_killed_driver_resumes_with_the_same_command(
        cluster: Cluster, second_node: int, simulators: tuple[str, str], workload: Path, tmp_path: Path) -> None:
    vllm_url = simulators[0]
    out = _out(tmp_path, "driver")
    start = teacher_calls(vllm_url)
    proc = _generate(out, simulators, workload, "--engine", "ray", "--batch_size", "4", ray_address=cluster.address)
    deadline = time.monotonic() + 300
    while teacher_calls(vllm_url) - start < 0.6 * _expected_calls():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the run made too few teacher calls in 5 minutes"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not out.exists()
    checkpoints = list(out.parent.glob(".hfdistill/*/turns.jsonl"))  # the turns of the rollouts in flight
    assert checkpoints and checkpoints[0].stat().st_size > 0
    code, err = _finish(_generate(out, simulators, workload, "--engine", "ray", "--batch_size", "4",
                                  ray_address=cluster.address))
    assert code == 0, err
    assert [(r["input_index"], r["rollout_index"]) for r in _rows(out)] == [(i, 0) for i in range(QUESTIONS)]
    counts = record_of(out).counts
    assert counts.rollouts_reused > 0  # the rerun took the killed run's finished rollouts from the journal
    assert counts.rollouts_reused + counts.rollouts_done == QUESTIONS
    check_output(out)


def test_the_embedded_retriever_works_on_every_node(cluster: Cluster, second_node: int,
                                                    simulators: tuple[str, str], workload: Path,
                                                    tmp_path: Path) -> None:
    # The driver builds the index once, next to the corpus; each actor loads it from the same path
    # (shared storage; on loopback, the same disk), given relative to the driver's working directory.
    passages = [{"id": str(i), "contents": f'"Entry {i}"\nsim-qid-{i:06d} fact 0.0 and fact 1.0 of entry {i}.'}
                for i in range(QUESTIONS)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(p) + "\n" for p in passages))
    local, ray = _out(tmp_path, "local"), _out(tmp_path, "ray")
    code, err = _finish(_generate(local, simulators, workload, "--corpus", "../corpus.jsonl"))
    assert code == 0, err
    code, err = _finish(_generate(ray, simulators, workload, "--corpus", "../corpus.jsonl", "--engine", "ray",
                                  ray_address=cluster.address))
    assert code == 0, err
    rows = _rows(ray)
    assert [_comparable(r) for r in rows] == [_comparable(r) for r in _rows(local)]
    observations = [m["content"] for r in rows for m in r["messages"] if m["role"] == "tool"]
    assert observations and all("Entry" in o for o in observations)  # documents found on both nodes


def test_a_judged_ray_run_judges_in_the_actors_as_a_local_run_does(
        cluster: Cluster, second_node: int, simulators: tuple[str, str], workload: Path, tmp_path: Path) -> None:
    # The judge says "incorrect" to every 7th question's right answer: its verdicts differ from exact match.
    fake = FakeJudge()
    fake.verdicts = {sim_vllm.golden_answer_for(sim_vllm.question_key(sim_vllm.make_question(i))): "incorrect"
                     for i in range(0, QUESTIONS, 7)}
    served = Served(fake.app())
    judge = ("--judge-url", f"{served.url}/v1")
    local, ray = _out(tmp_path, "local"), _out(tmp_path, "ray")
    try:
        code, err = _finish(_generate(local, simulators, workload, *judge))
        assert code == 0, err
        local_calls = fake.calls
        code, err = _finish(_generate(ray, simulators, workload, *judge, "--engine", "ray",
                                      ray_address=cluster.address))
        assert code == 0, err
        ray_calls = fake.calls - local_calls
    finally:
        served.close()
    rows = _rows(ray)
    assert [_comparable(r) for r in rows] == [_comparable(r) for r in _rows(local)]  # verdicts and pass rates too
    answered = [r for r in rows if r["prediction"]]
    assert answered and all(r["judge_correct"] is not None for r in answered)
    assert any(r["judge_correct"] != r["exact_match"] for r in answered)
    assert ray_calls == local_calls == len(answered)  # each rollout judged once, in an actor's window
    record = record_of(ray)
    assert record.judge is not None and record.judge.calls == ray_calls  # the actors' judge calls reach the driver
    assert record.correct_by.startswith("LLM judge")


def test_an_mcp_servers_tools_on_ray_give_the_local_runs_rows(cluster: Cluster, tmp_path: Path) -> None:
    """Each actor opens its own session to a stdio MCP server (started on its node); the rows are the local run's."""
    fake = FakeTeacher()
    fake.behaviour.stable = True  # ids from the conversation, so the two runs' rows compare
    add = {"operation": "add", "operands": [{"value": 1.5, "unit": "km"}, {"value": 2}]}
    questions = [f"How far is it over leg {i}?" for i in range(12)]
    for question in questions:
        fake.script(question, CallTool("calculate", add), Answer("3.5 km"))
    inp = write_jsonl(tmp_path / "in.jsonl", [{"question": q, "golden_answers": ["3.5 km"]} for q in questions])
    served = Served(fake.app())
    try:
        outs = {}
        for engine in ("local", "ray"):
            out, log = _out(tmp_path, engine), tmp_path / f"{engine}.calls.jsonl"
            env = {**ENV, "VLLM_URL": f"{served.url}/v1", "INPUT_FILE": str(inp), "OUTPUT_FILE": str(out),
                   "RAY_ADDRESS": cluster.address}
            args = ["--mcp", stdio_command("calc", log), "--tools", "calculate", "--max_assistant_turns", "5",
                    *(["--engine", "ray", "--batch_size", "4"] if engine == "ray" else [])]
            proc = subprocess.Popen([sys.executable, "-m", "hfdistill", "generate", "-q", *args], env=env, text=True,
                                    stderr=subprocess.PIPE, cwd=out.parent)
            code, err = _finish(proc)
            assert code == 0, err
            made = calls(log)
            assert [c["tool"] for c in made] == ["calculate"] * len(questions)  # each call made once
            # locally the run's own process starts the server; on Ray, the actors do
            assert {c["parent"] == proc.pid for c in made} == {engine == "local"}
            outs[engine] = out
    finally:
        served.close()
    ray_rows, local_rows = _rows(outs["ray"]), _rows(outs["local"])
    assert [_comparable(r) for r in ray_rows] == [_comparable(r) for r in local_rows]
    assert all(r["tool_calls_by_name"] == [{"name": "calculate", "calls": 1}] for r in ray_rows)
    assert all('"value": 3.5' in m["content"] for r in ray_rows for m in r["messages"] if m["role"] == "tool")
    check_output(outs["ray"])
