"""`generate --serve` and `serve-teacher` through the command line, with the stand-in vLLM (tests/fake_vllm): the
rows of a hand-started teacher, a server killed mid-run restarted with the rows unchanged, Ctrl-C and `kill -9` of
hfdistill leaving no server behind, a server that cannot start or dies too often ending the run with the reason.
The same against a real vLLM: tests/test_vllm_serve.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from hfdistill.cli.main import main
from tests.conftest import write_jsonl
from tests.fakes import FakeRetriever, FakeTeacher, Served, TeacherBehaviour
from tests.serve_util import alive, fake_vllm, model_dir, wait_until

NAME = "tiny-teacher"
QUESTIONS = [f"Question number {i}?" for i in range(24)]


@pytest.fixture
def retriever() -> Iterator[Served]:
    served = Served(FakeRetriever().app())
    yield served
    served.close()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retriever: Served) -> Path:
    monkeypatch.chdir(tmp_path)
    for key in ("VLLM_URL", "MAX_ASSISTANT_TURNS", "MAX_SAMPLES", "INPUT_FILE", "OUTPUT_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RETRIEVAL_URL", f"{retriever.url}/retrieve")
    write_jsonl(tmp_path / "in.jsonl", [{"question": q, "golden_answers": ["Paris"]} for q in QUESTIONS])
    return tmp_path


def _serve_args(model: Path, *extra: str) -> list[str]:
    return ["--serve", str(model), "--vllm-python", sys.executable, "--serve-args", f"--served-model-name {NAME}",
            *extra]


def _generate(out: str, *extra: str) -> list[str]:
    return ["generate", "--input_file", "in.jsonl", "--output_file", out, "--temperature", "0", *extra]


def _rows(path: Path) -> list[dict[str, Any]]:
    return sorted(pq.read_table(path).to_pylist(), key=lambda r: (r["input_index"], r["rollout_index"]))


def _hand_started_rows(workdir: Path) -> list[dict[str, Any]]:
    """The same input against a teacher started by hand (the same scripted server, in this process)."""
    teacher = Served(FakeTeacher(TeacherBehaviour(stable=True), model=NAME).app())
    try:
        assert main(_generate("by-hand.parquet", "--vllm_url", f"{teacher.url}/v1", "-q")) == 0
    finally:
        teacher.close()
    return _rows(workdir / "by-hand.parquet")


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hfdistill", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_generate_serve_writes_the_rows_of_a_hand_started_teacher(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    fake = fake_vllm(monkeypatch, workdir)
    model = model_dir(workdir)
    assert main(_generate("served.parquet", *_serve_args(model, "--serve-gpus", "0,1"))) == 0
    assert _rows(workdir / "served.parquet") == _hand_started_rows(workdir)
    starts = fake.starts()
    assert sorted(s["gpus"] for s in starts) == ["0", "1"]  # one server per GPU, each used
    assert starts[0]["start"][4:] == ["--port", starts[0]["start"][5], "--enable-auto-tool-choice",
                                      "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3",
                                      "--scheduling-policy", "priority", "--max-model-len", "4096",
                                      "--served-model-name", NAME]
    assert {c["chat"] for c in fake.chats()} >= {f"Question: {q}" for q in QUESTIONS}
    [run_dir] = (workdir / ".hfdistill").glob("served.parquet-*")
    assert sorted(p.name for p in run_dir.glob("vllm-*.log")) == ["vllm-0.log", "vllm-1.log"]
    assert fake.left() == []
    assert "vLLM ready: 2 server(s)" in capsys.readouterr().err


def test_a_server_killed_mid_run_is_restarted_and_the_rows_are_unchanged(workdir: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_vllm(monkeypatch, workdir, FAKE_VLLM_SLOW="0.3")
    run = _cli(*_generate("served.parquet", *_serve_args(model_dir(workdir))))
    wait_until(lambda: len(fake.chats()) >= len(QUESTIONS), 60, "every first turn sent")
    os.kill(fake.starts()[0]["pid"], signal.SIGKILL)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert len(fake.starts()) == 2 and "restarting it (restart 1 of 3" in err and "restarted in" in err
    assert ", retried 0" in err  # the turns cut off by the death waited for the restart: no retry spent
    monkeypatch.delenv("FAKE_VLLM_SLOW")
    assert _rows(workdir / "served.parquet") == _hand_started_rows(workdir)
    assert fake.left() == []


@pytest.mark.parametrize(("stop", "code"), [
    pytest.param(signal.SIGINT, 130, id="ctrl-c"),
    pytest.param(signal.SIGTERM, 130, id="sigterm"),
    pytest.param(signal.SIGKILL, -signal.SIGKILL, id="kill-9"),
])
def test_however_hfdistill_ends_no_server_is_left(workdir: Path, monkeypatch: pytest.MonkeyPatch, stop: int,
                                                  code: int) -> None:
    fake = fake_vllm(monkeypatch, workdir, FAKE_VLLM_SLOW="1")
    run = _cli(*_generate("served.parquet", *_serve_args(model_dir(workdir), "--serve-gpus", "0,1")))
    wait_until(lambda: len(fake.chats()) >= 4, 60, "rollouts under way")
    servers = fake.starts()
    run.send_signal(stop)
    _, err = run.communicate(timeout=120)
    assert run.returncode == code, err
    took = wait_until(lambda: not fake.left(), 30, "every server and engine process gone")
    assert len(servers) == 2 and not any(alive(s["engine_pid"]) for s in servers)
    print(f"{signal.Signals(stop).name}: no server process left {took:.1f}s after hfdistill ended")


def test_ctrl_c_while_the_servers_load_ends_the_wait_at_once(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_vllm(monkeypatch, workdir, FAKE_VLLM_DELAY="600")  # a model that loads for ten minutes
    run = _cli(*_generate("served.parquet", *_serve_args(model_dir(workdir))))
    wait_until(lambda: fake.starts(), 60, "the server started")
    run.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130 and "interrupted while the teacher's servers were starting" in err, err
    assert time.monotonic() - stopped < 15 and fake.left() == []


def test_a_server_that_cannot_start_ends_the_run_before_any_rollout(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."
    fake = fake_vllm(monkeypatch, workdir, FAKE_VLLM_FAIL=oom)
    started = time.monotonic()
    assert main(_generate("served.parquet", *_serve_args(model_dir(workdir)))) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and oom in errors[0] and "vllm-0.log" in errors[0], errors
    assert fake.chats() == [] and not (workdir / "served.parquet").exists()
    assert time.monotonic() - started < 30 and fake.left() == []


def test_a_server_that_dies_too_often_stops_the_run_keeping_its_rows(workdir: Path, monkeypatch: pytest.MonkeyPatch
                                                                     ) -> None:
    fake = fake_vllm(monkeypatch, workdir, FAKE_VLLM_SLOW="0.5")
    args = _generate("served.parquet", *_serve_args(model_dir(workdir), "--serve-max-restarts", "0"),
                     "--concurrency", "4")
    run = _cli(*args)
    wait_until(lambda: len(fake.chats()) >= 12, 60, "some rollouts finished")
    os.kill(fake.starts()[0]["pid"], signal.SIGKILL)
    _, err = run.communicate(timeout=120)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert run.returncode == 1 and len(errors) == 1, err
    assert "vllm-0" in errors[0] and "was killed by SIGKILL" in errors[0] and "vllm-0.log" in errors[0]
    assert "after 0 restart(s) (--serve-max-restarts 0); the run stopped" in errors[0]
    assert "rollouts are recorded in" in errors[0] and "rerun the same command to resume" in errors[0]
    assert fake.left() == []
    monkeypatch.delenv("FAKE_VLLM_SLOW")
    assert main(args) == 0  # the rerun resumes from the journal
    assert _rows(workdir / "served.parquet") == _hand_started_rows(workdir)


@pytest.mark.parametrize(("extra", "env", "message"), [
    pytest.param(["--vllm-python", sys.executable], {}, 'vLLM is not installed for .*pip install "hfdistill\\[vllm\\]"',
                 id="no-vllm"),
    pytest.param(["--vllm-python", "/no/such/python"], {}, "no such file", id="no-python"),
    pytest.param(["--vllm_url", "http://gpu1:8000/v1"], {}, "drop one of them", id="with-vllm-url"),
    pytest.param([], {"VLLM_URL": "http://gpu1:8000/v1"}, "VLLM_URL names others", id="with-VLLM_URL"),
    pytest.param(["--serve-tensor-parallel", "2"], {}, "needs GPUs", id="tensor-parallel-without-gpus"),
    pytest.param(["--serve-args", "--port 9000"], {}, "use --serve-port", id="port-in-serve-args"),
])
def test_bad_serve_options_are_one_line_before_any_server(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str], extra: list[str],
                                                          env: dict[str, str], message: str) -> None:
    fake = fake_vllm(monkeypatch, workdir, **env)
    if extra[:2] == ["--vllm-python", sys.executable]:
        monkeypatch.delenv("PYTHONPATH")  # this environment has no vLLM: only the stand-in does
    args = ["--serve", str(model_dir(workdir)), *(["--vllm-python", sys.executable] if "--vllm-python" not in extra
                                                  else []), *extra]
    assert main(_generate("served.parquet", *args)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(message, errors[0]), errors
    assert fake.starts() == []


def test_serve_teacher_serves_two_runs_then_stops_on_sigterm(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_vllm(monkeypatch, workdir)
    server = _cli("serve-teacher", str(model_dir(workdir)), "--vllm-python", sys.executable, "--serve-port", "0",
                  "--serve-gpus", "0,1", "--serve-args", f"--served-model-name {NAME}", "--log-dir", "logs")
    try:
        assert server.stdout is not None
        line = server.stdout.readline().strip()
        assert line.startswith("VLLM_URL=http://127.0.0.1:") and line.count(",") == 1, line
        monkeypatch.setenv("VLLM_URL", line.split("=", 1)[1])
        assert main(_generate("first.parquet", "-q")) == 0
        assert main(_generate("second.parquet", "-q", "--num_rollouts", "2")) == 0
        assert len(fake.starts()) == 2  # both runs used the same two servers
        assert _rows(workdir / "first.parquet") == [r for r in _rows(workdir / "second.parquet")
                                                    if r["rollout_index"] == 0]
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode == 0, err
    assert fake.left() == []
    assert sorted(p.name for p in (workdir / "logs").iterdir()) == ["vllm-0.log", "vllm-1.log"]
