"""`hfdistill index`: a real encoder (all-MiniLM-L6-v2, offline) over a corpus the tests make, into faiss indexes
that faiss (as Search-R1's server calls it) reads; a build killed with SIGKILL resumes to the same index."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from hfdistill.cli.main import main
from hfdistill.core.encoders import conventions
from hfdistill.core.errors import ConfigError
from hfdistill.retrieval.dense_index import BuildOptions, build_dense_index
from hfdistill.retrieval.fingerprint import full_hash
from tests.corpus_util import write_jsonl
from tests.dense_util import corpus_rows, hfdistill_logs, minilm

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "c.jsonl", corpus_rows())


def test_build_writes_an_index_faiss_reads_and_a_manifest(corpus: Path, tmp_path: Path) -> None:
    assert main(["index", "--corpus", str(corpus), "--encoder", str(minilm()), "--out", str(tmp_path / "idx")]) == 0
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert (manifest["index_file"], manifest["index_type"], manifest["dim"], manifest["count"]) == \
        ("dense_Flat.index", "Flat", 384, len(corpus_rows()))
    assert manifest["encoder"] == conventions(str(minilm())).to_dict()
    assert manifest["corpus"]["full_hash"] == full_hash(corpus) and manifest["encoded_in"] == "float32"
    index = faiss.read_index(str(tmp_path / "idx" / "dense_Flat.index"))  # what Search-R1's DenseRetriever does
    vectors = index.reconstruct_n(0, index.ntotal)
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert not (tmp_path / "idx" / ".build").exists()


@pytest.mark.parametrize("index_type", ["HNSW16", "IVF4,PQ8x4"])
def test_approximate_index_types(corpus: Path, tmp_path: Path, index_type: str) -> None:
    manifest = build_dense_index(corpus, tmp_path, conventions(str(minilm())), BuildOptions(index_type=index_type))
    index = faiss.read_index(str(tmp_path / manifest["index_file"]))
    assert index.ntotal == len(corpus_rows()) and manifest["index_type"] == index_type
    flat = np.load(tmp_path / "rows.npy")  # the passage numbering is kept beside the index
    assert len(flat) == len(corpus_rows())


def test_an_unknown_index_type_fails_before_any_encoding(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--index-type 'LSH' is not one this builds"):
        build_dense_index(corpus, tmp_path, conventions(str(minilm())), BuildOptions(index_type="LSH"))


def _index_args(corpus: Path, out: Path) -> list[str]:
    return ["index", "--corpus", str(corpus), "--encoder", str(minilm()), "--out", str(out), "--shard-rows", "4",
            "--batch-size", "4"]


def test_a_build_killed_with_sigkill_resumes_to_the_same_index(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"id": f"{n}-{r['id']}", "contents": r["contents"] + f" ({n})"} for n in range(2) for r in corpus_rows()]
    corpus = write_jsonl(tmp_path / "big.jsonl", rows)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "hfdistill", *_index_args(corpus, out)], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 120
        while not (out / ".build" / "shard-000002.npy").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the build ended before it could be killed"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    finished = len(list((out / ".build").glob("shard-*.npy")))
    assert finished < len(rows) // 4 and not (out / "manifest.json").exists()
    assert main(_index_args(corpus, out)) == 0
    assert f"resuming the build: {finished} of {len(rows) // 4} shards are finished" in capsys.readouterr().err
    assert main(_index_args(corpus, tmp_path / "clean")) == 0
    assert (out / "dense_Flat.index").read_bytes() == (tmp_path / "clean" / "dense_Flat.index").read_bytes()
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (out, tmp_path / "clean")]
    assert manifests[0]["vectors_hash"] == manifests[1]["vectors_hash"]


def test_an_unfinished_build_with_other_settings_starts_over(corpus: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / ".build").mkdir()
    (tmp_path / ".build" / "settings.json").write_text(json.dumps({"shard_rows": 1}))
    np.save(tmp_path / ".build" / "shard-000000.npy", np.zeros((1, 384), np.float32))
    with hfdistill_logs(caplog, "WARNING"):
        build_dense_index(corpus, tmp_path, conventions(str(minilm())), BuildOptions())
    assert "used other settings or another corpus; starting over" in caplog.text
    index = faiss.read_index(str(tmp_path / "dense_Flat.index"))
    assert np.abs(index.reconstruct(0)).sum() > 0  # not the stale zero vector
