"""kill -9 mid-run on the real HotpotQA input (or, without `../shared`, as many of the simulator's own
questions) against the benchmark's simulated vLLM: the rerun continues every conversation from its last
finished turn, so the two runs together cost few more teacher calls than one clean run (the issue's goal:
at most 1.10x)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.simulators import simulators as simulators_running
from tests.simulators import teacher_calls

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import sim_vllm  # noqa: E402 - the benchmark's simulator names its questions

HOTPOTQA = REPO.parent / "shared" / "data" / "hotpotqa_hard_train" / "train.parquet"
QUESTIONS = 600
KILL_AT = 0.40
GOAL = 1.10


@pytest.fixture
def workload(tmp_path: Path) -> Path:
    """The shared HotpotQA input when it is beside the repo; otherwise the simulator's own questions."""
    if HOTPOTQA.exists():
        return HOTPOTQA
    questions = [sim_vllm.make_question(i) for i in range(QUESTIONS)]
    golden = [[sim_vllm.golden_answer_for(sim_vllm.question_key(q))] for q in questions]
    path = tmp_path / "questions.parquet"
    pq.write_table(pa.table({"question": questions, "golden_answers": golden}), path)
    return path


@pytest.fixture
def simulators() -> Iterator[tuple[str, str]]:
    # Generation 5x slower than the benchmark's default (still ~8x faster than a 30B model on a GPU): at
    # full simulator speed the client on this small machine, not the teacher, is the bottleneck, and a
    # kill would also lose replies that arrived but were not read yet, which a real run does not have.
    with simulators_running("--tpot", "0.0035") as urls:
        yield urls


def _generate(out: Path, vllm_url: str, retrieval_url: str, workload: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "VLLM_URL": f"{vllm_url}/v1", "RETRIEVAL_URL": retrieval_url, "INPUT_FILE": str(workload),
           "MAX_SAMPLES": str(QUESTIONS), "OUTPUT_FILE": str(out)}
    return subprocess.Popen([sys.executable, "-m", "hfdistill", "generate", "-q"], env=env, text=True,
                            stderr=subprocess.PIPE)


def _keys(out: Path) -> list[tuple[int, int]]:
    table = pq.read_table(out, columns=["input_index", "rollout_index"])
    return list(zip(table["input_index"].to_pylist(), table["rollout_index"].to_pylist(), strict=True))


@pytest.mark.timeout(600)
def test_kill_9_at_40_percent_then_rerun_costs_at_most_110_percent_of_a_clean_run(
        simulators: tuple[str, str], workload: Path, tmp_path: Path) -> None:
    vllm_url, retrieval_url = simulators
    clean = tmp_path / "clean" / "out.parquet"
    clean.parent.mkdir()
    proc = _generate(clean, vllm_url, retrieval_url, workload)
    assert proc.wait(300) == 0, proc.communicate()[1]
    clean_calls = teacher_calls(vllm_url)

    killed = tmp_path / "killed" / "out.parquet"
    killed.parent.mkdir()
    proc = _generate(killed, vllm_url, retrieval_url, workload)
    while teacher_calls(vllm_url) - clean_calls < KILL_AT * clean_calls:
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    at_kill = teacher_calls(vllm_url) - clean_calls
    assert not killed.exists()
    rerun = _generate(killed, vllm_url, retrieval_url, workload)
    assert rerun.wait(300) == 0, rerun.communicate()[1]
    total = teacher_calls(vllm_url) - clean_calls

    assert _keys(killed) == _keys(clean) == [(i, 0) for i in range(QUESTIONS)]  # every row, exactly once
    ratio = total / clean_calls
    print(f"\nclean run {clean_calls} teacher calls; killed at {at_kill} ({at_kill / clean_calls:.0%}); "
          f"killed + rerun {total} = {ratio:.3f}x")
    assert ratio <= GOAL
