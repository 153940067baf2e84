"""A real vLLM stopped with SIGTERM mid-run: the run ends within a couple of minutes, its rows in the failures
file, instead of waiting out --request-timeout on sockets the stopping server keeps open (issue 10, defect 6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.corpus_util import write_jsonl
from tests.vllm_env import ensure_vllm_venv
from tests.vllm_server import Engine, build_models, start_engine

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1800)]

ROLLOUTS = 32


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    python = ensure_vllm_venv()
    models = build_models(python, tmp_path_factory.mktemp("models"))
    engine = start_engine(python, models["moe"], tmp_path_factory.mktemp("vllm-stopped"),
                          ("--enable-auto-tool-choice", "--tool-call-parser", "hermes"))
    yield engine
    engine.stop()


def test_a_server_stopped_mid_run_fails_its_rollouts_within_minutes(server: Engine, tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"question": f"[endless] Question {i}?"} for i in range(ROLLOUTS)])
    corpus = write_jsonl(tmp_path / "small.jsonl", [{"id": "0", "contents": '"Paris"\nParis is in France.'}])
    out = tmp_path / "out.parquet"
    cmd = [sys.executable, "-m", "hfdistill", "generate", "--vllm_url", f"{server.url}/v1", "--corpus", str(corpus),
           "--input_file", str(inp), "--output_file", str(out), "--max_tokens", "3500", "-q"]
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as run:
        deadline = time.monotonic() + 300
        while len(server.prompts()) < ROLLOUTS and time.monotonic() < deadline:  # every request is open
            time.sleep(0.5)
        assert run.poll() is None and len(server.prompts()) >= ROLLOUTS
        server.proc.send_signal(signal.SIGTERM)  # SIGTERM the API server only, as a user stopping `vllm serve` would
        stopped = time.monotonic()
        _, err = run.communicate(timeout=600)
        elapsed = time.monotonic() - stopped
    assert run.returncode == 3, err  # finished, with failures to retry
    failures = [json.loads(line) for line in (tmp_path / "out.failures.jsonl").read_text().splitlines()]
    causes = {f["cause"] for f in failures}
    assert len(failures) == ROLLOUTS and causes <= {"teacher_stalled", "teacher_connection"}, failures
    print(f"the run ended {elapsed:.0f}s after the server was stopped; causes {sorted({f['cause'] for f in failures})}")
    assert elapsed < 170, f"the run took {elapsed:.0f}s to notice the stopped server"
