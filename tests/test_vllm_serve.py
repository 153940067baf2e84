"""hfdistill starting, watching and stopping a real vLLM (0.32, its CPU build) itself: `generate --serve DIR` and
`serve-teacher DIR`, with the tiny scripted Qwen3-MoE of the `vllm` tier (tests/vllm_fixture), passed through
`--serve-args` and the environment, and `--vllm-python` the tier's venv. One server at a time.

- `serve-teacher`, then two `generate` runs against it (rows exact), then Ctrl-C: no vLLM process is left.
- `generate --serve` with the server killed (`kill -9`) mid-run: restarted, the run ends 0, rows exact.
- `kill -9` of `generate --serve`: no vLLM process is left.
- a model directory that does not load: exit 2 with vLLM's last error line, within a bound.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.corpus_util import write_jsonl
from tests.serve_util import session_members, wait_until
from tests.test_vllm_engine import CORPUS, EXPECTED, MAX_TURNS
from tests.vllm_env import ensure_vllm_venv
from tests.vllm_server import FIXTURE_DIR, SERVED_NAME, build_models

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1800)]

SCENARIOS = ["answer", "search-1", "search-3", "two-calls", "malformed", "unknown-tool", "no-tool-call", "max-turns"]
ENDLESS = 6  # rollouts that think until --max_tokens: requests open long enough to kill the server under them
MAX_TOKENS = 1024
SERVE_ARGS = f"--enforce-eager --dtype bfloat16 --served-model-name {SERVED_NAME} " \
             "--logits-processors scripted:ScriptedCompletions"
START_BOUND = 240  # seconds for a failed start to be reported (vLLM itself takes 30-40 s here to fail)


@dataclass
class Setup:
    python: Path
    model: Path
    work: Path
    env: dict[str, str]  # for hfdistill's command, inherited by the servers it starts
    prompt_log: Path

    def serve(self, *extra: str) -> list[str]:
        return ["--vllm-python", str(self.python), "--serve-args", SERVE_ARGS, *extra]

    def prompts(self) -> list[dict[str, Any]]:
        if not self.prompt_log.exists():
            return []
        return [json.loads(line) for line in self.prompt_log.read_text().splitlines()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    python = ensure_vllm_venv()
    models = build_models(python, tmp_path_factory.mktemp("models"))
    work = tmp_path_factory.mktemp("serve")
    write_jsonl(work / "corpus.jsonl", CORPUS)
    questions = [f"[{s}] What is the capital of France?" for s in SCENARIOS]
    questions += [f"[endless] Question {i}?" for i in range(ENDLESS)]
    write_jsonl(work / "in.jsonl", [{"question": q, "golden_answers": ["Paris"]} for q in questions])
    log = work / "prompts.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV", "VLLM_URL")}
    env.update(PYTHONPATH=str(FIXTURE_DIR), SCRIPT_PROMPT_LOG=str(log), VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_CPU_OMP_THREADS_BIND="nobind", HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
               PYTHONUNBUFFERED="1")
    return Setup(python, models["moe"], work, env, log)


def _generate(setup: Setup, out: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hfdistill", "generate", "--input_file", str(setup.work / "in.jsonl"),
            "--corpus", str(setup.work / "corpus.jsonl"), "--output_file", str(setup.work / out), "--temperature", "0",
            "--max_assistant_turns", str(MAX_TURNS), "--max_tokens", str(MAX_TOKENS), "--keep-malformed", *extra]


def vllm_sessions(model: Path) -> set[int]:
    """The sessions of the vLLM API servers of `model` running now (each leads its own: its engine core and
    workers, renamed VLLM::EngineCore and VLLM::Worker, are in it). Not their supervisors, whose command lines
    hold the server's."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:3] == [b"-m", b"vllm.entrypoints.openai.api_server"] and str(model).encode() in argv:
            found.add(os.getsid(int(entry)))
    return found


def _left(sessions: set[int]) -> list[int]:
    return [pid for sid in sessions for pid in session_members(sid)]


def _rows(path: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for row in pq.read_table(path).to_pylist():
        key = row["question"].split("]", 1)[0].lstrip("[")
        rows[f"{key}-{row['question']}" if key == "endless" else key] = row
    return rows


def _comparable(row: dict[str, Any]) -> dict[str, Any]:
    """A row without the ids vLLM draws at random for each tool call."""
    messages = [{k: v for k, v in m.items() if k not in ("tool_calls", "tool_call_id")} for m in row["messages"]]
    calls = [[c["function"] for c in m["tool_calls"] or []] for m in row["messages"]]
    return {**{k: v for k, v in row.items() if k != "messages"}, "messages": messages, "calls": calls}


def _check_rows(path: Path) -> dict[str, dict[str, Any]]:
    rows = _rows(path)
    assert len(rows) == len(SCENARIOS) + ENDLESS
    for scenario in SCENARIOS:
        row = rows[scenario]
        got = (row["stop_reason"], row["assistant_turns"], row["num_tool_calls"], row["num_tool_errors"])
        assert got == EXPECTED[scenario], scenario
    for key, row in rows.items():
        if key.startswith("endless"):
            assert (row["stop_reason"], row["assistant_turns"]) == ("length", 1), key
    return rows


# ---------------------------------------------------------------- serve-teacher, shared by two runs


@pytest.fixture(scope="module")
def shared(setup: Setup) -> Iterator[dict[str, Any]]:
    """serve-teacher started, two runs made against it, then Ctrl-C: what each step showed."""
    started = time.monotonic()
    server = subprocess.Popen([sys.executable, "-m", "hfdistill", "serve-teacher", str(setup.model), "--serve-port",
                               "0", "--log-dir", str(setup.work / "teacher-logs"), *setup.serve()],
                              env=setup.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[str, Any] = {}
    try:
        assert server.stdout is not None
        line = server.stdout.readline().strip()
        seen["url_line"], seen["ready_after"] = line, time.monotonic() - started
        seen["sessions"] = vllm_sessions(setup.model)
        env = {**setup.env, "VLLM_URL": line.partition("=")[2]}
        seen["runs"] = [subprocess.run(_generate(setup, out, "-q"), env=env, capture_output=True, text=True,
                                       timeout=600, check=False) for out in ("shared-1.parquet", "shared-2.parquet")]
        server.send_signal(signal.SIGINT)
        _, seen["err"] = server.communicate(timeout=120)
        seen["code"] = server.returncode
        seen["left"] = wait_until(lambda: not _left(seen["sessions"]), 60, "vLLM gone after Ctrl-C")
        yield seen
    finally:
        server.kill()


def test_serve_teacher_prints_the_url_and_serves_two_runs(setup: Setup, shared: dict[str, Any]) -> None:
    assert shared["url_line"].startswith("VLLM_URL=http://127.0.0.1:") and shared["url_line"].endswith("/v1")
    for run in shared["runs"]:
        assert run.returncode == 0, run.stderr
    first, second = (_check_rows(setup.work / f"shared-{i}.parquet") for i in (1, 2))
    assert {k: _comparable(r) for k, r in first.items()} == {k: _comparable(r) for k, r in second.items()}
    assert len(shared["sessions"]) == 1
    print(f"serve-teacher: VLLM_URL printed {shared['ready_after']:.0f}s after the command")


def test_ctrl_c_stops_serve_teacher_leaving_no_vllm_process(shared: dict[str, Any]) -> None:
    assert shared["code"] == 0, shared["err"]
    assert shared["left"] < 30, f"the servers took {shared['left']:.0f}s to go after Ctrl-C"


# ---------------------------------------------------------------- generate --serve


def test_a_server_killed_mid_run_is_restarted_and_the_rows_are_exact(setup: Setup, shared: dict[str, Any]) -> None:
    setup.prompt_log.unlink(missing_ok=True)
    started = time.time()
    run = subprocess.Popen(_generate(setup, "killed.parquet", "--serve", str(setup.model), *setup.serve()),
                           env=setup.env, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: sum(p["scenario"] == "endless" for p in setup.prompts()) >= ENDLESS, 300,
                   "the endless rollouts under way")
        first_rollout = min(p["t"] for p in setup.prompts() if p["scenario"] is not None)
        [session] = vllm_sessions(setup.model)
        os.kill(session, signal.SIGKILL)  # the API server alone (it leads its session); its engine core lives on
        killed = time.monotonic()
        _, err = run.communicate(timeout=900)
    finally:
        run.kill()
    assert run.returncode == 0, err
    assert "was killed by SIGKILL" in err and "restarting it (restart 1 of 3" in err and "restarted in" in err
    assert ", retried 0" in err  # the turns cut off by the death waited for the restart: no retry spent
    rows = _check_rows(setup.work / "killed.parquet")
    reference = _rows(setup.work / "shared-1.parquet")
    assert {k: _comparable(r) for k, r in rows.items()} == {k: _comparable(r) for k, r in reference.items()}
    assert not _left({session}) and not vllm_sessions(setup.model)
    print(f"generate --serve: the first rollout reached vLLM {first_rollout - started:.0f}s after the command; the run "
          f"ended {time.monotonic() - killed:.0f}s after the kill")


def test_kill_9_of_generate_leaves_no_vllm_process(setup: Setup, shared: dict[str, Any]) -> None:
    setup.prompt_log.unlink(missing_ok=True)
    run = subprocess.Popen(_generate(setup, "abandoned.parquet", "--serve", str(setup.model), *setup.serve()),
                           env=setup.env, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: any(p["scenario"] for p in setup.prompts()), 300, "rollouts under way")
        sessions = vllm_sessions(setup.model)
        assert len(sessions) == 1 and _left(sessions)
        run.kill()  # SIGKILL: no handler, no finally in hfdistill
        run.wait()
        took = wait_until(lambda: not _left(sessions), 60, "vLLM gone after kill -9 of hfdistill")
    finally:
        run.kill()
    print(f"kill -9 of generate --serve: no vLLM process {took:.1f}s later")


def test_a_model_that_does_not_load_ends_the_run_with_vllms_error(setup: Setup, tmp_path: Path) -> None:
    broken = tmp_path / "no-weights"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (broken / name).write_bytes((setup.model / name).read_bytes())  # everything but the weights
    started = time.monotonic()
    done = subprocess.run(_generate(setup, "broken.parquet", "--serve", str(broken), *setup.serve()), env=setup.env,
                          capture_output=True, text=True, timeout=START_BOUND + 60, check=False)
    took = time.monotonic() - started
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert "exited with code 1 before it answered: RuntimeError: Cannot find any model weights" in errors[0]
    assert "vllm-0.log" in errors[0] and took < START_BOUND
    assert not (setup.work / "broken.parquet").exists() and not vllm_sessions(broken)
    print(f"a model without weights: exit 2 after {took:.0f}s: {errors[0]}")
