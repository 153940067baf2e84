"""`generate --corpus` (embedded BM25) and `hfdistill serve-retriever`: one retriever, two transports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from hfdistill.cli.main import main
from tests.conftest import write_verl_parquet
from tests.corpus_util import CITIES, free_port, tool_messages, write_jsonl
from tests.fakes import Answer, FakeTeacher, Search, Served

Q = "What is the capital of France?"



def _wait_healthy(url: str, proc: subprocess.Popen[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                return json.loads(resp.read())
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the retrieval server did not come up")


@pytest.fixture
def scripted(teacher: tuple[FakeTeacher, Served]) -> tuple[FakeTeacher, Served]:
    teacher[0].script(Q, Search(["capital of France", "Zyzzyva weevil"]), Answer("Paris"))
    return teacher


def test_generate_with_an_embedded_corpus_needs_no_retrieval_server(scripted: tuple[FakeTeacher, Served],
                                                                    tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", CITIES)
    out = tmp_path / "o.parquet"
    inp = write_verl_parquet(tmp_path / "in.parquet", [(Q, ["Paris"])])
    rc = main(["generate", "--vllm_url", f"{scripted[1].url}/v1", "--retrieval_url", "http://127.0.0.1:9/retrieve",
               "--corpus", str(corpus), "--input_file", str(inp), "--output_file", str(out)])
    assert rc == 0
    [observation] = tool_messages(out)
    assert observation.startswith("Query: capital of France\n[1] Paris: Paris is the capital and largest city")
    assert "\n\nQuery: Zyzzyva weevil\n[1] Zyzzyva: Zyzzyva is a genus of weevils" in observation
    assert (tmp_path / "corpus.jsonl.bm25s").is_dir()  # the index is kept for the next run


def test_the_same_corpus_over_http_renders_identical_observations(scripted: tuple[FakeTeacher, Served],
                                                                  tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", CITIES)
    inp = write_verl_parquet(tmp_path / "in.parquet", [(Q, ["Paris"])])
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "hfdistill", "serve-retriever", "--corpus", str(corpus),
                               "--port", str(port), "--index-dir", str(tmp_path / "index")],
                              stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert _wait_healthy(f"http://127.0.0.1:{port}", server) == {"status": "ok", "documents": len(CITIES)}
        for fmt in ("seed", "verl"):
            http_out, local_out = tmp_path / f"http-{fmt}.parquet", tmp_path / f"local-{fmt}.parquet"
            common = ["generate", "--vllm_url", f"{scripted[1].url}/v1", "--input_file", str(inp),
                      "--observation-format", fmt]
            assert main([*common, "--retrieval_url", f"http://127.0.0.1:{port}/retrieve",
                         "--output_file", str(http_out)]) == 0
            assert main([*common, "--corpus", str(corpus), "--output_file", str(local_out)]) == 0
            assert tool_messages(http_out) == tool_messages(local_out)
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=20)
    assert server.returncode == 0
    assert f"at http://127.0.0.1:{port}/retrieve" in err


def test_a_bad_corpus_line_is_one_line_before_any_teacher_call(teacher: tuple[FakeTeacher, Served], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [CITIES[0], '{"id": "1", "text": "no title"}'])
    rc = main(["generate", "--vllm_url", f"{teacher[1].url}/v1", "--corpus", str(corpus),
               "--input_file", str(write_verl_parquet(tmp_path / "in.parquet")),
               "--output_file", str(tmp_path / "o.parquet")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "corpus.jsonl line 2" in err
    assert teacher[0].requests == []


def test_a_missing_corpus_file(teacher: tuple[FakeTeacher, Served], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["generate", "--vllm_url", f"{teacher[1].url}/v1", "--corpus", str(tmp_path / "nope.jsonl"),
               "--input_file", str(write_verl_parquet(tmp_path / "in.parquet")),
               "--output_file", str(tmp_path / "o.parquet")])
    assert rc == 2
    assert "--corpus" in capsys.readouterr().err and teacher[0].requests == []
