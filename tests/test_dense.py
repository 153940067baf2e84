"""The dense retriever with a real encoder (all-MiniLM-L6-v2, offline) and real faiss: the same top-k as
Search-R1's own server code path on the same index and encoder, each bad input as one ConfigError before
anything is searched, and answer recall@3 against BM25 on a question set the tests make."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from hfdistill.core.encoders import DenseOptions, EncoderOverrides
from hfdistill.core.errors import ConfigError
from hfdistill.retrieval.bm25 import BM25Retriever
from hfdistill.retrieval.dense import DenseRetriever
from hfdistill.retrieval.embedded import open_embedded
from hfdistill.retrieval.faiss_file import FlatWriter
from tests.corpus_util import write_jsonl
from tests.dense_util import PASSAGES, QUESTIONS, corpus_rows, hfdistill_logs, minilm

REPO_ROOT = Path(__file__).resolve().parent.parent
QUERIES = ["Who came up with relativity?", "tallest mountain", "the composer from Salzburg", "", "oxygen atom"]


# ---------------------------------------------------------------- Search-R1's code path, step by step


def search_r1_encode(model_path: Path, method: str, texts: list[str], *, is_query: bool,
                     max_length: int) -> np.ndarray:
    """What Search-R1's `Encoder.encode` (retrieval_server.py, queries) and `Index_Builder.encode_all`
    (index_builder.py, passages) compute: prefixes keyed on the retriever's name, the tokenizer with
    padding and truncation, the model, masked mean pooling, L2 normalisation, float32."""
    if "e5" in method.lower():
        texts = [f"query: {t}" if is_query else f"passage: {t}" for t in texts]
    tokenizer = AutoTokenizer.from_pretrained(str(model_path), use_fast=True)
    model = AutoModel.from_pretrained(str(model_path)).eval()
    inputs = tokenizer(texts, max_length=max_length, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        output = model(**inputs, return_dict=True)
    hidden = output.last_hidden_state.masked_fill(~inputs["attention_mask"][..., None].bool(), 0.0)
    emb = hidden.sum(dim=1) / inputs["attention_mask"].sum(dim=1)[..., None]
    emb = torch.nn.functional.normalize(emb, dim=-1)
    return emb.detach().cpu().numpy().astype(np.float32, order="C")


def search_r1_index(model_path: Path, corpus: list[dict[str, str]], path: Path) -> Path:
    """index_builder.py: every passage's `contents` (with `passage: ` for e5) at max_length 180, one batch of up
    to 512, into `faiss.index_factory(dim, "Flat", METRIC_INNER_PRODUCT)`, written with `faiss.write_index`."""
    emb = search_r1_encode(model_path, "e5", [r["contents"] for r in corpus], is_query=False, max_length=180)
    index = faiss.index_factory(emb.shape[1], "Flat", faiss.METRIC_INNER_PRODUCT)
    index.add(emb)
    faiss.write_index(index, str(path))
    return path


def search_r1_search(model_path: Path, index_path: Path, corpus: list[dict[str, str]], queries: list[str],
                     k: int) -> list[list[tuple[str, float]]]:
    """retrieval_server.py's `_batch_search`: encode (max_length 256), `index.search`, documents by row."""
    index = faiss.read_index(str(index_path))
    scores, idxs = index.search(search_r1_encode(model_path, "e5", queries, is_query=True, max_length=256), k=k)
    return [[(corpus[int(i)]["id"], float(s)) for i, s in zip(ii, ss, strict=True)] for ii, ss in zip(idxs, scores,
                                                                                                     strict=True)]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def e5_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM under a name with `e5` in it: the e5 conventions (query:/passage: prefixes) apply, on both sides."""
    link = tmp_path_factory.mktemp("models") / "e5-minilm"
    link.symlink_to(minilm(), target_is_directory=True)
    return link


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "c.jsonl", corpus_rows())


@pytest.fixture(scope="module")
def built(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index `hfdistill index` built with MiniLM's own conventions (no prefixes)."""
    from hfdistill.cli.main import main

    out = tmp_path_factory.mktemp("idx") / "minilm"
    assert main(["index", "--corpus", str(corpus), "--encoder", str(minilm()), "--out", str(out), "-q"]) == 0
    return out


def _search(retriever: object, queries: list[str], k: int) -> list[list[tuple[str, float]]]:
    docs = asyncio.run(retriever.search(queries, k))  # type: ignore[attr-defined]
    return [[(d.id, d.score) for d in hits] for hits in docs]


# ---------------------------------------------------------------- Search-R1 equality


def test_search_r1s_published_kind_of_index_as_it_is(e5_model: Path, corpus: Path, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    index = search_r1_index(e5_model, corpus_rows(), tmp_path / "e5_Flat.index")
    want = search_r1_search(e5_model, index, corpus_rows(), QUERIES, 3)
    with hfdistill_logs(caplog), DenseRetriever.load(corpus, DenseOptions(index=str(index),
                                                                           encoder=str(e5_model))) as ours:
        got = _search(ours, QUERIES, 3)
    assert [[i for i, _ in hits] for hits in got] == [[i for i, _ in hits] for hits in want]
    assert np.allclose([[s for _, s in h] for h in got], [[s for _, s in h] for h in want], atol=1e-5)
    assert "no manifest beside" in caplog.text and "queries prefixed 'query: '" in caplog.text


def test_an_index_hfdistill_builds_is_search_r1s(e5_model: Path, corpus: Path, tmp_path: Path) -> None:
    from hfdistill.cli.main import main

    assert main(["index", "--corpus", str(corpus), "--encoder", str(e5_model), "--out", str(tmp_path / "ours"),
                 "-q"]) == 0
    theirs = faiss.read_index(str(search_r1_index(e5_model, corpus_rows(), tmp_path / "e5_Flat.index")))
    ours = faiss.read_index(str(tmp_path / "ours" / "e5_Flat.index"))  # named as Search-R1 names it
    assert np.allclose(ours.reconstruct_n(0, ours.ntotal), theirs.reconstruct_n(0, theirs.ntotal), atol=1e-5)
    served_by_them = search_r1_search(e5_model, tmp_path / "ours" / "e5_Flat.index", corpus_rows(), QUERIES, 3)
    with DenseRetriever.load(corpus, DenseOptions(index=str(tmp_path / "ours"))) as retriever:
        got = _search(retriever, QUERIES, 3)
    assert [[i for i, _ in h] for h in got] == [[i for i, _ in h] for h in served_by_them]


def test_documents_come_back_whole_and_in_rank_order(built: Path, corpus: Path) -> None:
    with DenseRetriever.load(corpus, DenseOptions(index=str(built))) as retriever:
        [[first, *rest]] = asyncio.run(retriever.search(["Who painted the Mona Lisa?"], 3))
    assert (first.id, first.title) == ("4", "Leonardo da Vinci")
    assert first.contents == corpus_rows()[4]["contents"] and first.text.startswith("Leonardo da Vinci painted")
    assert first.score is not None and all(first.score >= d.score for d in rest)  # type: ignore[operator]


# ---------------------------------------------------------------- bad input


def _bare(tmp_path: Path, rows: int, dim: int) -> str:
    FlatWriter(tmp_path / "bare.index", dim, rows).write([np.ones((rows, dim), np.float32) / np.sqrt(dim)])
    return str(tmp_path / "bare.index")


def _edited_corpus(tmp_path: Path) -> Path:
    rows = corpus_rows()
    rows[3]["contents"] += " Edited."
    return write_jsonl(tmp_path / "edited.jsonl", rows)


@pytest.mark.parametrize(("options", "corpus_of", "message"), [
    pytest.param(lambda p, b: DenseOptions(index=str(p / "nope")), None, "--index .*nope: no such file or directory",
                 id="missing-index"),
    pytest.param(lambda p, b: DenseOptions(index=_file(p / "x.index", b"garbage garbage garbage garbage garbage"),
                                           encoder=str(minilm())), None, "is not a faiss index", id="unreadable-index"),
    pytest.param(lambda p, b: DenseOptions(index=str(p)), None, "has no manifest.json", id="dir-without-manifest"),
    pytest.param(lambda p, b: DenseOptions(index=_bare(p, 40, 384)), None, "bare faiss file without a manifest: pass "
                 "--encoder", id="bare-without-encoder"),
    pytest.param(lambda p, b: DenseOptions(index=_bare(p, 40, 8), encoder=str(minilm())), None,
                 "makes 384-dimensional vectors but the index .* holds 8-dimensional ones", id="dimension"),
    pytest.param(lambda p, b: DenseOptions(index=_bare(p, 41, 384), encoder=str(minilm())), None,
                 "has 40 passages but the index .* holds 41 vectors", id="row-count"),
    pytest.param(lambda p, b: DenseOptions(index=str(b)), _edited_corpus, "is not the corpus the index .* was built "
                 "from", id="manifest-fingerprint"),
    pytest.param(lambda p, b: DenseOptions(index=str(b), overrides=EncoderOverrides(pooling="cls")), None,
                 "built with other encoder settings: --pooling 'cls' \\(built with 'mean'\\)", id="manifest-conflict"),
])
def test_bad_input_is_one_config_error_before_any_search(built: Path, corpus: Path, tmp_path: Path, options: object,
                                                         corpus_of: object, message: str) -> None:
    opts = options(tmp_path, built)  # type: ignore[operator]
    with pytest.raises(ConfigError, match=message) as raised:
        DenseRetriever.load(corpus_of(tmp_path) if corpus_of else corpus, opts)  # type: ignore[operator]
    assert "\n" not in str(raised.value)


def _file(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_without_the_dense_extra_one_line_names_the_install(corpus: Path, built: Path, tmp_path: Path) -> None:
    script = ("import sys; sys.modules['torch'] = None; from hfdistill.cli.main import main; "
              f"sys.exit(main(['serve-retriever', '--corpus', {str(corpus)!r}, '--index', {str(built)!r}, "
              "'--port', '0']))")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ('error: --retriever dense needs torch, which is not installed: '
                                                   'pip install "hfdistill[dense]"')


# ---------------------------------------------------------------- what it finds


def test_answer_recall_at_3_dense_against_bm25(built: Path, corpus: Path, tmp_path: Path) -> None:
    questions = [q for q, _ in QUESTIONS]

    def recall(retriever: object) -> float:
        found = asyncio.run(retriever.search(questions, 3))  # type: ignore[attr-defined]
        return sum(any(a.lower() in d.contents.lower() for d in docs)
                   for docs, (_, a) in zip(found, QUESTIONS, strict=True)) / len(QUESTIONS)

    with DenseRetriever.load(corpus, DenseOptions(index=str(built))) as dense, \
            BM25Retriever.load(corpus, tmp_path / "bm25") as bm25:
        dense_recall, bm25_recall = recall(dense), recall(bm25)
    print(f"\nanswer recall@3 over {len(QUESTIONS)} questions, {len(PASSAGES)} passages: "
          f"dense (all-MiniLM-L6-v2) {dense_recall:.2f}, BM25 {bm25_recall:.2f}")
    assert dense_recall >= 0.9 and dense_recall >= bm25_recall


def test_identity_names_the_vectors_and_the_encoder(built: Path, corpus: Path, e5_model: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    with DenseRetriever.load(corpus, DenseOptions(index=str(built))) as dense:
        mine = dense.identity()
    assert mine["kind"] == "dense" and mine["vectors"] == manifest["vectors_hash"]
    assert mine["encoder"]["name"] == "all-minilm-l6-v2"  # a local directory by its name: moving it changes nothing
    hybrid = open_embedded(corpus, "hybrid", index_dir=str(built.parent / "bm25"), dense=DenseOptions(index=str(built)))
    try:
        assert hybrid.identity() == {"kind": "hybrid", "fusion": "rrf-60", "depth": 10, "dense": mine}
    finally:
        hybrid.close()
