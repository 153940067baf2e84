"""Hybrid retrieval: reciprocal rank fusion of BM25 and dense, on the real retrievers and as a pure function."""

from __future__ import annotations

import asyncio

import pytest

from hfdistill.core.encoders import DenseOptions
from hfdistill.core.types import Document
from hfdistill.retrieval.embedded import open_embedded
from hfdistill.retrieval.hybrid import HybridRetriever, fuse
from tests.corpus_util import write_jsonl
from tests.dense_util import corpus_rows, minilm

QELVAR = {"id": "q", "contents": '"Qelvar"\nQelvar is a hamlet that holds a harvest fair each autumn.'}


def _doc(i: str) -> Document:
    return Document(id=i, title=i, text=f"text {i}", contents=f'"{i}"\ntext {i}')


@pytest.mark.parametrize(("lists", "want"), [
    pytest.param([["a", "b", "c"], ["a", "d"]], ["a", "b", "d"], id="agreement-first-then-each-list's-next"),
    pytest.param([["a", "b"], ["c", "d"]], ["a", "c", "b"], id="disjoint-interleave-by-rank"),
    pytest.param([["x"], ["a", "b", "c"]], ["x", "a", "b"], id="one-found-only-by-bm25-is-kept"),
    pytest.param([[], ["a", "b", "c", "d"]], ["a", "b", "c"], id="nothing-from-one-side"),
    pytest.param([["b", "a"], ["a", "b"]], ["b", "a"], id="a-tie-keeps-first-seen-order"),
])
def test_fuse(lists: list[list[str]], want: list[str]) -> None:
    fused = fuse([[_doc(i) for i in ranking] for ranking in lists], 3)
    assert [d.id for d in fused] == want
    assert fused[0].score == pytest.approx(sum(1 / (60 + r.index(want[0]) + 1) for r in lists if want[0] in r))


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory: pytest.TempPathFactory) -> HybridRetriever:
    from hfdistill.cli.main import main

    tmp = tmp_path_factory.mktemp("hybrid")
    corpus = write_jsonl(tmp / "c.jsonl", [*corpus_rows(), QELVAR])
    assert main(["index", "--corpus", str(corpus), "--encoder", str(minilm()), "--out", str(tmp / "dense"), "-q"]) == 0
    retriever = open_embedded(corpus, "hybrid", index_dir=str(tmp / "bm25"),
                              dense=DenseOptions(index=str(tmp / "dense")))
    assert isinstance(retriever, HybridRetriever)
    return retriever


def _ids(docs: list[Document]) -> list[str]:
    return [d.id for d in docs]


def test_hybrid_ranks_passages_only_one_retriever_found(hybrid: HybridRetriever) -> None:
    q = "Which festival does Qelvar hold?"
    [bm25] = asyncio.run(hybrid.bm25.search([q], 10))
    [dense] = asyncio.run(hybrid.dense.search([q], 10))
    [fused] = asyncio.run(hybrid.search([q], 3))
    assert _ids(bm25) == ["q"]  # only the passage naming Qelvar shares a term with the question
    assert _ids(fused)[0] == "q"  # both found it: first
    only_dense = [i for i in _ids(fused)[1:] if i not in _ids(bm25)]
    assert only_dense == [i for i in _ids(dense) if i != "q"][:2]  # then what dense alone found, in its order


def test_hybrid_is_dense_when_bm25_finds_nothing(hybrid: HybridRetriever) -> None:
    q = "the of and"  # stopwords only: BM25 has no term to match
    assert asyncio.run(hybrid.bm25.search([q], 10)) == [[]]
    assert _ids(asyncio.run(hybrid.search([q], 3))[0]) == _ids(asyncio.run(hybrid.dense.search([q], 3))[0])


def test_hybrid_knows_its_corpus(hybrid: HybridRetriever) -> None:
    assert len(hybrid) == len(corpus_rows()) + 1 and hybrid.corpus_hash == hybrid.bm25.corpus_hash


def test_hybrid_and_dense_open_documents_of_their_corpus(hybrid: HybridRetriever) -> None:
    # The open tool's documents come from the corpus rows the dense index numbers (cached beside it).
    opened = asyncio.run(hybrid.documents().open("q", 1000))
    assert opened is not None and (opened.title, opened.text) == ("Qelvar", QELVAR["contents"].split("\n", 1)[1])
    assert hybrid.documents() is hybrid.dense.documents()
    assert asyncio.run(hybrid.documents().open("mount everest", 1000)).text.startswith("Mount Everest is")
