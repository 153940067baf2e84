"""`--engine ray --serve MODEL`: the servers planned per node (pure), and on a real two-node Ray cluster on loopback
each node starting its own CPU vLLM server (the tiny scripted model of the `vllm` tier), the rows exact, both
servers used, and none left after the run (slow: two servers at once on this 2-core machine)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from hfdistill.core.errors import ServeError
from hfdistill.engines.ray_serve import NodeReplicas, plan_nodes
from tests.corpus_util import write_jsonl
from tests.ray_cluster import ENV, Cluster
from tests.serve_util import session_members
from tests.test_vllm_engine import CORPUS, EXPECTED, MAX_TURNS
from tests.vllm_env import ensure_vllm_venv
from tests.vllm_server import FIXTURE_DIR, SERVED_NAME, build_models


def _node(name: str, gpus: int = 0, alive: bool = True) -> dict[str, Any]:
    resources = {"CPU": 8.0, **({"GPU": float(gpus)} if gpus else {})}
    return {"NodeID": name, "NodeManagerAddress": f"10.0.0.{len(name)}", "Alive": alive, "Resources": resources}


@pytest.mark.parametrize(("nodes", "tp", "planned"), [
    pytest.param([_node("a", 8), _node("bb", 8)], 2, [("a", 4, 2), ("bb", 4, 2)], id="two-gpu-nodes"),
    pytest.param([_node("head"), _node("gpu", 4)], 1, [("gpu", 4, 1)], id="a-cpu-head-serves-nothing"),
    pytest.param([_node("a", 4), _node("b", 2)], 4, [("a", 1, 4)], id="a-node-too-small-for-a-replica"),
    pytest.param([_node("a"), _node("b"), _node("c", alive=False)], 1, [("a", 1, 0), ("b", 1, 0)],
                 id="no-gpu-one-cpu-server-per-live-node"),
])
def test_each_gpu_node_gets_its_replicas(nodes: list[dict[str, Any]], tp: int,
                                         planned: list[tuple[str, int, int]]) -> None:
    assert [(n.node_id, n.replicas, n.gpus) for n in plan_nodes(nodes, tp)] == planned
    assert all(isinstance(n, NodeReplicas) for n in plan_nodes(nodes, tp))


@pytest.mark.parametrize(("nodes", "tp", "message"), [
    pytest.param([_node("a", 2)], 4, "no node of the Ray cluster has 4 GPUs", id="too-few-gpus"),
    pytest.param([_node("a")], 2, "needs GPUs", id="tensor-parallel-on-cpu"),
])
def test_a_cluster_that_cannot_hold_a_replica_is_one_error(nodes: list[dict[str, Any]], tp: int,
                                                           message: str) -> None:
    with pytest.raises(ServeError, match=message):
        plan_nodes(nodes, tp)


# ---------------------------------------------------------------- a real cluster, real vLLM


SCENARIOS = ["answer", "search-1", "search-2", "two-calls", "no-tool-call", "max-turns"]


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    python = ensure_vllm_venv()
    return python, build_models(python, tmp_path_factory.mktemp("models"))["moe"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two nodes whose processes (and so the servers the hosts start) have the scripted model's environment."""
    env = {**ENV, "PYTHONPATH": str(FIXTURE_DIR), "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "SCRIPT_PROMPT_LOG": str(tmp_path_factory.mktemp("prompts") / "prompts.jsonl")}
    cluster = Cluster(env=env)
    try:
        cluster.start()
        cluster.add_node()
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.ray
@pytest.mark.vllm
@pytest.mark.timeout(1200)
def test_each_node_starts_its_own_server(cluster: Cluster, vllm: tuple[Path, Path], tmp_path: Path) -> None:
    python, model = vllm
    write_jsonl(tmp_path / "corpus.jsonl", CORPUS)
    write_jsonl(tmp_path / "in.jsonl", [{"question": f"[{s}] What is the capital of France?",
                                         "golden_answers": ["Paris"]} for s in SCENARIOS])
    env = {**cluster.env, "RAY_ADDRESS": cluster.address, "PYTHONUNBUFFERED": "1"}
    env.pop("VLLM_URL", None)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "hfdistill", "generate", "--engine", "ray", "--serve", str(model), "--vllm-python",
         str(python), "--serve-args", f"--enforce-eager --dtype bfloat16 --served-model-name {SERVED_NAME} "
         "--logits-processors scripted:ScriptedCompletions", "--input_file", "in.jsonl", "--corpus", "corpus.jsonl",
         "--output_file", "out.parquet", "--temperature", "0", "--max_assistant_turns", str(MAX_TURNS),
         "--max_tokens", "96", "--batch_size", "1"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1100, check=False)
    assert done.returncode == 0, done.stderr
    rows = {r["question"].split("]")[0][1:]: r for r in pq.read_table(tmp_path / "out.parquet").to_pylist()}
    for scenario in SCENARIOS:
        row = rows[scenario]
        assert (row["stop_reason"], row["assistant_turns"], row["num_tool_calls"], row["num_tool_errors"]) == \
            EXPECTED[scenario], scenario
    [run_dir] = (tmp_path / ".hfdistill").glob("out.parquet-*")
    logs = sorted(p.name for p in run_dir.glob("vllm-*.log"))
    assert logs == ["vllm-0-0.log", "vllm-1-0.log"], logs  # one server per node
    assert "vLLM ready on the cluster" in done.stderr
    [used] = [line for line in done.stderr.splitlines() if "teacher calls" in line]
    assert len(re.findall(r"[\w.]+:\d+ [1-9]\d*", used)) == 2, used  # both nodes' servers served turns
    assert not _vllm_left(model)
    print(f"two nodes, a CPU server each: the run took {time.monotonic() - started:.0f}s")


def _vllm_left(model: Path) -> list[int]:
    sessions = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:3] == [b"-m", b"vllm.entrypoints.openai.api_server"] and str(model).encode() in argv:
            sessions.add(os.getsid(int(entry)))
    return [pid for sid in sessions for pid in session_members(sid)]
