"""Dense retrieval end to end: `hfdistill index` -> `serve-retriever --index` -> `generate`, against a scripted teacher,
with a real encoder (all-MiniLM-L6-v2, offline), real faiss and a real server on loopback. In-process and served
give the same observations; the run's fingerprint names the retriever; bad input fails before any teacher call."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import datasets
import pytest

from hfdistill import DistillConfig, Distiller
from hfdistill.cli.main import main
from hfdistill.core.encoders import DenseOptions
from hfdistill.run.record import RetrievalInfo
from tests.conftest import record_of, write_verl_parquet
from tests.corpus_util import free_port, tool_messages, write_jsonl
from tests.dense_util import QUESTIONS, corpus_rows, minilm
from tests.fakes import Answer, FakeTeacher, Search, Served

ASKED = QUESTIONS[:8]  # rollouts in flight together: their searches are batched in-process and at the server


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("dense-e2e")
    corpus = write_jsonl(tmp / "corpus.jsonl", corpus_rows())
    assert main(["index", "--corpus", str(corpus), "--encoder", str(minilm()), "--out", str(tmp / "index"), "-q"]) == 0
    return corpus, tmp / "index"


@pytest.fixture
def scripted(teacher: tuple[FakeTeacher, Served]) -> tuple[FakeTeacher, Served]:
    for question, answer in ASKED:
        teacher[0].script(question, Search([question, f"{answer} facts"]), Answer(answer))
    return teacher



def _wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 120) -> dict:
    """Poll /health: 503 while the index and encoder load and warm up, then 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        answer: tuple[int, object] | None = None
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            answer = (e.code, json.loads(e.read()))
        except OSError:  # not listening yet
            pass
        assert answer in (None, (503, {"status": "loading"}))
        time.sleep(0.1)
    raise AssertionError("the retrieval server did not become ready")


def test_build_serve_generate_identical_observations_in_process_and_served(
        scripted: tuple[FakeTeacher, Served], built: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, index = built
    inp = write_verl_parquet(tmp_path / "in.parquet", [(q, [a]) for q, a in ASKED])
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "hfdistill", "serve-retriever", "--corpus", str(corpus),
                               "--index", str(index), "--port", str(port)], stderr=subprocess.PIPE, text=True,
                              env=os.environ.copy())
    try:
        assert _wait_ready(f"http://127.0.0.1:{port}", server) == {"status": "ok", "documents": len(corpus_rows())}
        common = ["generate", "--vllm_url", f"{scripted[1].url}/v1", "--input_file", str(inp)]
        served_out, local_out = tmp_path / "served.parquet", tmp_path / "local.parquet"
        assert main([*common, "--retrieval_url", f"http://127.0.0.1:{port}/retrieve", "--output_file",
                     str(served_out)]) == 0
        assert main([*common, "--corpus", str(corpus), "--index", str(index), "--output_file", str(local_out)]) == 0
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert "dense retriever ready" in err and f"at http://127.0.0.1:{port}/retrieve" in err
    served, local = tool_messages(served_out), tool_messages(local_out)
    assert served == local and len(local) == len(ASKED)
    everest = next(m for m in local if m.startswith("Query: What is the tallest mountain on the planet?"))
    assert "[1] Mount Everest: Mount Everest is Earth's highest peak" in everest
    record = record_of(local_out)
    assert record.retrieval == RetrievalInfo(corpus="corpus.jsonl", retriever="dense")
    assert record.generation_options.retriever is not None and record.generation_options.retriever["kind"] == "dense"
    assert record_of(served_out).generation_options.retriever is None  # over HTTP the server is not ours to name


def test_the_fingerprint_changes_with_the_retriever(scripted: tuple[FakeTeacher, Served], built: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    corpus, index = built
    inp = write_verl_parquet(tmp_path / "in.parquet", [(q, [a]) for q, a in ASKED])
    common = ["generate", "--vllm_url", f"{scripted[1].url}/v1", "--input_file", str(inp), "--corpus", str(corpus),
              "--index-dir", str(tmp_path / "bm25")]
    runs = {"bm25": [], "dense": ["--index", str(index)], "hybrid": ["--index", str(index), "--retriever", "hybrid"]}
    prints = {}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.parquet"
        assert main([*common, *extra, "--output_file", str(out)]) == 0
        prints[name] = record_of(out).fingerprint
    assert len(set(prints.values())) == 3
    # The same output file with another retriever is refused, naming what changed.
    rc = main([*common, "--output_file", str(tmp_path / "dense.parquet"), "--index", str(index), "--retriever",
               "hybrid"])
    assert rc == 2


def test_concurrent_rollouts_search_together_in_process(scripted: tuple[FakeTeacher, Served],
                                                        built: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, index = built
    config = DistillConfig(vllm_url=f"{scripted[1].url}/v1", corpus=str(corpus), retriever="dense",
                           dense=DenseOptions(index=str(index), batch_wait_ms=50))
    ds = datasets.load_dataset("parquet", split="train", data_files=str(
        write_verl_parquet(tmp_path / "in.parquet", [(q, [a]) for q, a in ASKED])))
    distiller = Distiller(config)
    out = distiller.map(ds, batch_size=len(ASKED))
    stats = distiller.clients.embedded().batcher.stats  # type: ignore[attr-defined]
    assert out.num_rows == len(ASKED) and stats.queries == 2 * len(ASKED)
    assert stats.largest > 2  # the searches of several rollouts went through one encoder pass


@pytest.mark.parametrize(("args", "message"), [
    pytest.param(lambda tmp, index: ["--index", str(tmp / "nope")], "no such file or directory", id="missing-index"),
    pytest.param(lambda tmp, index: ["--index", str(index / "dense_Flat.index"), "--encoder", str(tmp / "no-model")],
                 "cannot load the encoder", id="missing-encoder"),
    pytest.param(lambda tmp, index: ["--retriever", "hybrid"], "--retriever hybrid needs --index",
                 id="hybrid-no-index"),
])
def test_bad_input_is_one_line_before_any_teacher_call(teacher: tuple[FakeTeacher, Served], built: tuple[Path, Path],
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      args: object, message: str) -> None:
    corpus, index = built
    rc = main(["generate", "--vllm_url", f"{teacher[1].url}/v1", "--corpus", str(corpus),
               "--input_file", str(write_verl_parquet(tmp_path / "in.parquet")),
               "--output_file", str(tmp_path / "o.parquet"), *args(tmp_path, index)])  # type: ignore[operator]
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1] and "Traceback" not in "\n".join(err)
    assert teacher[0].requests == []
