"""`hfdistill download wiki-18` against the in-memory Hub on loopback (tests/fake_hub.py), never the real one.

huggingface_hub reads `HF_ENDPOINT` when imported, so each download runs as `python -m hfdistill download` in a
child process pointed at the fake Hub, which serves Search-R1's repo layout with a small corpus and index.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hfdistill.cli.dense import DATASETS, INDEXES
from hfdistill.retrieval import download as dl
from hfdistill.retrieval.faiss_file import FlatWriter
from tests.corpus_util import write_jsonl
from tests.dense_util import corpus_rows
from tests.fake_hub import FakeHub
from tests.fakes import Served

REPO_ROOT = Path(__file__).resolve().parent.parent
INDEX_REPO, INDEX_NAME = dl.INDEX_REPOS["e5-flat"]


def _index_bytes(tmp_path: Path, rows: int, dim: int = 8) -> bytes:
    path = tmp_path / "made.index"
    FlatWriter(path, dim, rows).write([np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)])
    return path.read_bytes()


def _parts(data: bytes, n: int = 3) -> dict[str, bytes]:
    size = -(-len(data) // n)
    return {f"part_a{chr(ord('a') + i)}": data[i * size:(i + 1) * size] for i in range(n)}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[FakeHub, Served, bytes]]:
    corpus = write_jsonl(tmp_path / "wiki.jsonl", corpus_rows()).read_bytes()
    index = _index_bytes(tmp_path, len(corpus_rows()))
    fake = FakeHub()
    fake.add_repo(dl.CORPUS_REPO, {dl.CORPUS_FILE: gzip.compress(corpus)})
    fake.add_repo(INDEX_REPO, {**_parts(index), "README.md": b"cat part_* > e5_Flat.index\n"})
    served = Served(fake.app())
    yield fake, served, index
    served.close()


def _download(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1",
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5")
    return subprocess.run([sys.executable, "-m", "hfdistill", "download", "wiki-18", "--out", str(tmp_path / "wiki"),
                           *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def _gets(fake: FakeHub, name: str) -> int:
    return sum(1 for method, path in fake.requests if method == "GET" and path.endswith(f"/{name}"))


def test_the_command_knows_what_the_module_fetches() -> None:
    assert (DATASETS, INDEXES) == (dl.DATASETS, dl.INDEXES)


def test_corpus_gunzipped_and_parts_joined_into_the_published_index(hub: tuple[FakeHub, Served, bytes],
                                                                    tmp_path: Path) -> None:
    fake, served, index = hub
    fake.cut_once["part_ab"] = 10  # the connection drops mid-part: huggingface_hub fetches it again
    done = _download(tmp_path, served.url)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "wiki"
    assert (out / INDEX_NAME).read_bytes() == index
    assert (out / dl.CORPUS_NAME).read_bytes() == (tmp_path / "wiki.jsonl").read_bytes()
    assert _gets(fake, "part_ab") == 2
    # Each part was deleted once joined (the disk never holds the index twice), and the download's bookkeeping after.
    assert sorted(p.name for p in out.iterdir()) == sorted([dl.CORPUS_NAME, f"{dl.CORPUS_NAME}.rows", INDEX_NAME])
    assert f"--index {out / INDEX_NAME} --encoder intfloat/e5-base-v2" in done.stdout
    assert f"({len(corpus_rows())} passages)" in done.stdout
    again = _download(tmp_path, served.url)  # everything is there: nothing is fetched again
    assert again.returncode == 0 and _gets(fake, "part_aa") == 1 and _gets(fake, dl.CORPUS_FILE) == 1


def test_a_failed_part_is_one_line_and_a_rerun_resumes_after_the_joined_ones(hub: tuple[FakeHub, Served, bytes],
                                                                            tmp_path: Path) -> None:
    fake, served, index = hub
    fake.fail_paths["part_ac"] = 403  # (huggingface_hub retries a 5xx for a while; the resume is the same)
    failed = _download(tmp_path, served.url)
    assert failed.returncode != 0
    assert failed.stderr.strip().splitlines()[-1].startswith("error: the Hub answered 403")
    assert "rerun the same command to resume" in failed.stderr and "Traceback" not in failed.stderr
    fake.fail_paths.clear()
    done = _download(tmp_path, served.url)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "wiki" / INDEX_NAME).read_bytes() == index
    assert (_gets(fake, "part_aa"), _gets(fake, "part_ab"), _gets(fake, dl.CORPUS_FILE)) == (1, 1, 1)


@pytest.mark.parametrize(("damage", "message"), [
    pytest.param(lambda data: data[:-4], "is truncated or damaged", id="a-part-lost-bytes"),
    pytest.param(lambda data: _index_bytes_for_rows(data, 7), "holds 7 vectors but", id="another-corpus"),
])
def test_a_joined_index_that_does_not_check_out(hub: tuple[FakeHub, Served, bytes], tmp_path: Path,
                                                damage: object, message: str) -> None:
    fake, served, index = hub
    fake.add_repo(INDEX_REPO, _parts(damage(index)))  # type: ignore[operator]
    failed = _download(tmp_path, served.url)
    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


def _index_bytes_for_rows(data: bytes, rows: int) -> bytes:
    dim = int(np.frombuffer(data[4:8], "<i4")[0])
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"hfdistill-test-{os.getpid()}.index"
    FlatWriter(path, dim, rows).write([np.zeros((rows, dim), np.float32)])
    try:
        return path.read_bytes()
    finally:
        path.unlink()


def test_corpus_only_and_bm25(hub: tuple[FakeHub, Served, bytes], tmp_path: Path) -> None:
    fake, served, _ = hub
    only = _download(tmp_path, served.url, "--index", "none")
    assert only.returncode == 0, only.stderr
    assert not any(path.endswith("part_aa") for _, path in fake.requests)
    bm25 = _download(tmp_path, served.url, "--index", "bm25")
    assert bm25.returncode == 0, bm25.stderr
    assert (tmp_path / "wiki" / f"{dl.CORPUS_NAME}.bm25s" / "manifest.json").is_file()
    assert _gets(fake, dl.CORPUS_FILE) == 1
