"""The embedded BM25 retriever: corpus shapes and errors, index reuse, ranking, the async protocol."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from hfdistill.core.errors import ConfigError, CorpusError, RetrievalError
from hfdistill.core.types import Document
from hfdistill.retrieval import bm25
from hfdistill.retrieval.bm25 import BM25Retriever, parse_passage
from tests.corpus_util import CITIES, write_jsonl


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", CITIES)


@pytest.fixture
def retriever(corpus: Path):
    r = BM25Retriever.load(corpus)
    yield r
    r.close()


def manifest(index_dir: Path) -> dict:
    return json.loads((index_dir / "manifest.json").read_text())


# ---------------------------------------------------------------- corpus shapes


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        pytest.param(
            {"id": "7", "contents": '"Paris"\nParis is the capital.\nMore.'},
            Document("7", "Paris", "Paris is the capital.\nMore.", '"Paris"\nParis is the capital.\nMore.'),
            id="contents-quoted-title",
        ),
        pytest.param(
            {"id": "7", "contents": "Paris\nParis is the capital."},
            Document("7", "Paris", "Paris is the capital.", "Paris\nParis is the capital."),
            id="contents-bare-title",
        ),
        pytest.param(
            {"id": 7, "title": "Paris", "text": "Paris is the capital."},
            Document("7", "Paris", "Paris is the capital.", '"Paris"\nParis is the capital.'),
            id="title-text-int-id",
        ),
        pytest.param(
            {"id": "7", "title": '"Paris"', "text": "x", "extra": [1]},
            Document("7", "Paris", "x", '"Paris"\nx'),
            id="title-text-quoted-title-extra-field",
        ),
    ],
)
def test_parse_passage_shapes(row: dict, expected: Document) -> None:
    assert parse_passage(json.dumps(row), "c.jsonl line 1") == expected


def test_title_text_corpus_is_searchable_in_search_r1_shape(tmp_path: Path) -> None:
    rows = [{"id": i, "title": f"City {i}", "text": f"text number {i} about town{i}"} for i in range(3)]
    with BM25Retriever.load(write_jsonl(tmp_path / "tt.jsonl", rows)) as r:
        [[doc]] = r.search_batch(["town1"], 1)
    assert (doc.id, doc.title, doc.text) == ("1", "City 1", "text number 1 about town1")
    assert doc.contents == '"City 1"\ntext number 1 about town1'
    assert doc.score > 0


def test_non_ascii_passages_and_crlf_blank_lines_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    lines = [json.dumps(CITIES[5], ensure_ascii=False), "", json.dumps(CITIES[0], ensure_ascii=False), ""]
    path.write_bytes("\r\n".join(lines).encode())
    with BM25Retriever.load(path) as r:
        assert len(r) == 2
        [[kyoto], [paris]] = r.search_batch(["京都 café", "paris"], 1)
    assert kyoto.contents == CITIES[5]["contents"]
    assert paris.id == "0"


# ---------------------------------------------------------------- corpus errors


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        pytest.param(['{"id": "1", "contents": '], r"c\.jsonl line 2: not valid JSON", id="invalid-json"),
        pytest.param(["[1, 2]"], r"c\.jsonl line 2: expected a JSON object, got list", id="not-an-object"),
        pytest.param(['{"contents": "\\"T\\"\\nx"}'], r'c\.jsonl line 2: missing "id"', id="missing-id"),
        pytest.param(['{"id": ["1"], "contents": "x"}'], r'line 2: "id" must be a string or an integer, got list',
                     id="id-list"),
        pytest.param(['{"id": true, "contents": "x"}'], r'line 2: "id" must be a string or an integer, got bool',
                     id="id-bool"),
        pytest.param(['{"id": "1", "text": "x"}'], r'c\.jsonl line 2: missing "contents" \(or "title"\+"text"\)',
                     id="missing-contents"),
        pytest.param(['{"id": "1", "title": "x"}'], r'line 2: missing "contents"', id="title-without-text"),
        pytest.param(['{"id": "1", "contents": 5}'], r'line 2: "contents" must be a string, got int',
                     id="contents-not-string"),
        pytest.param(['{"id": "1", "title": null, "text": "x"}'], r'line 2: "title" must be a string, got NoneType',
                     id="title-null"),
        pytest.param(["", '{"id": "1"}'], r'c\.jsonl line 3: missing "contents"', id="blank-lines-count"),
    ],
)
def test_bad_line_fails_the_load_naming_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [CITIES[0], *lines, CITIES[1]])
    with pytest.raises(CorpusError, match=message):
        BM25Retriever.load(corpus)
    assert os.listdir(tmp_path) == ["c.jsonl"], "a failed build leaves no index and no temp dir"


def test_invalid_utf8_line(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b'{"id": "1", "contents": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl line 1: not valid JSON"):
        BM25Retriever.load(corpus)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("", r"c\.jsonl: the corpus has no passages", id="empty-file"),
        pytest.param("\n  \n\n", r"c\.jsonl: the corpus has no passages", id="blank-lines-only"),
    ],
)
def test_empty_corpus(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "c.jsonl").write_text(content)
    with pytest.raises(CorpusError, match=message):
        BM25Retriever.load(tmp_path / "c.jsonl")


def test_missing_corpus_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"corpus file not found: .*nope\.jsonl"):
        BM25Retriever.load(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------- index reuse


def test_second_load_reuses_the_index(corpus: Path) -> None:
    with BM25Retriever.load(corpus) as first:
        assert first.built
        assert first.index_dir == corpus.with_name("corpus.jsonl.bm25s")
        built_at = manifest(first.index_dir)["built_at"]
    with BM25Retriever.load(corpus) as second:
        assert not second.built
        assert manifest(second.index_dir)["built_at"] == built_at
        assert second.search_batch(["zyzzyva"], 1)[0][0].id == "3"


def test_rebuild_flag_and_custom_index_dir(corpus: Path, tmp_path: Path) -> None:
    index_dir = tmp_path / "elsewhere" / "idx"
    with BM25Retriever.load(corpus, index_dir) as r:
        assert r.built
        assert r.index_dir == index_dir
    with BM25Retriever.load(corpus, index_dir, rebuild=True) as r:
        assert r.built
    assert not corpus.with_name("corpus.jsonl.bm25s").exists()


def test_appended_passage_triggers_a_rebuild(corpus: Path) -> None:
    BM25Retriever.load(corpus).close()
    with corpus.open("a") as f:
        f.write(json.dumps({"id": "9", "contents": '"Oslo"\nOslo is the capital of Norway.'}) + "\n")
    with BM25Retriever.load(corpus) as r:
        assert r.built
        assert len(r) == len(CITIES) + 1
        assert r.search_batch(["norway"], 1)[0][0].id == "9"


def test_same_size_edit_with_restored_mtime_triggers_a_rebuild(corpus: Path) -> None:
    BM25Retriever.load(corpus).close()
    st = corpus.stat()
    corpus.write_text(corpus.read_text().replace("weevils", "beetles"))
    os.utime(corpus, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as before: only content differs
    with BM25Retriever.load(corpus) as r:
        assert r.built
        assert r.search_batch(["beetles"], 1)[0][0].id == "3"


def test_touched_but_unchanged_corpus_is_reused(corpus: Path) -> None:
    BM25Retriever.load(corpus).close()
    os.utime(corpus, ns=(1_000_000_000, 1_000_000_000))
    with BM25Retriever.load(corpus) as r:
        assert not r.built
        assert manifest(r.index_dir)["mtime_ns"] == 1_000_000_000  # next load takes the fast path


def test_half_written_index_without_manifest_is_rebuilt(corpus: Path) -> None:
    index_dir = corpus.with_name("corpus.jsonl.bm25s")
    index_dir.mkdir()
    (index_dir / "data.csc.index.npy").write_bytes(b"truncated")
    with BM25Retriever.load(corpus) as r:
        assert r.built
        assert len(r) == len(CITIES)


def test_corrupt_index_files_are_rebuilt(corpus: Path) -> None:
    BM25Retriever.load(corpus).close()
    index_dir = corpus.with_name("corpus.jsonl.bm25s")
    (index_dir / "spans.npy").write_bytes(b"garbage")
    with BM25Retriever.load(corpus) as r:
        assert r.built
        assert r.search_batch(["zyzzyva"], 1)[0][0].id == "3"


def test_index_built_with_another_analyzer_is_rebuilt(corpus: Path) -> None:
    BM25Retriever.load(corpus).close()
    path = corpus.with_name("corpus.jsonl.bm25s") / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "analyzer": {"stemmer": "other"}}))
    with BM25Retriever.load(corpus) as r:
        assert r.built


# ---------------------------------------------------------------- search


def test_rare_token_ranks_first_with_scores_descending(retriever: BM25Retriever) -> None:
    [docs] = retriever.search_batch(["which genus is zyzzyva in the capital city"], 4)
    assert docs[0].id == "3"
    scores = [d.score for d in docs]
    assert scores == sorted(scores, reverse=True)
    assert all(s > 0 for s in scores)


def test_one_result_list_per_query_in_order(retriever: BM25Retriever) -> None:
    results = retriever.search_batch(["germany", "spain", "japan"], 1)
    assert [r[0].title for r in results] == ["Berlin", "Madrid", "Kyoto"]


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("", id="empty"),
        pytest.param("   \n\t", id="whitespace"),
        pytest.param("the of and", id="stopwords-only"),
        pytest.param("qwertyuiop", id="unknown-word"),
    ],
)
def test_query_matching_nothing_returns_empty_list(retriever: BM25Retriever, query: str) -> None:
    assert retriever.search_batch([query, "paris"], 2)[0] == []


def test_corpus_of_stopwords_only_loads_and_matches_nothing(tmp_path: Path) -> None:
    rows = [{"id": "1", "contents": "The\nthe of and"}, {"id": "2", "title": "a", "text": "a"}]
    with BM25Retriever.load(write_jsonl(tmp_path / "c.jsonl", rows)) as r:
        assert len(r) == 2
        assert r.search_batch(["the", "anything"], 3) == [[], []]


def test_topk_larger_than_corpus_returns_what_matches(retriever: BM25Retriever) -> None:
    [docs] = retriever.search_batch(["capital"], 100)
    assert sorted(d.id for d in docs) == ["0", "1", "2", "5"]


def test_stemming_matches_inflections(retriever: BM25Retriever) -> None:
    if bm25.Stemmer is None:
        pytest.skip("PyStemmer is not installed: terms are not stemmed")
    assert retriever.search_batch(["weevil"], 1)[0][0].id == "3"


@pytest.mark.parametrize("topk", [0, -1, True, 2.5])
def test_bad_topk_is_a_config_error(retriever: BM25Retriever, topk: object) -> None:
    with pytest.raises(ConfigError, match="topk must be an integer >= 1"):
        retriever.search_batch(["paris"], topk)  # type: ignore[arg-type]


def test_async_search_matches_search_batch_and_survives_aclose(retriever: BM25Retriever) -> None:
    async def go() -> list[list[Document]]:
        out = await retriever.search(("paris", ""), 2)
        await retriever.aclose()
        return out

    expected = retriever.search_batch(["paris", ""], 2)
    assert asyncio.run(go()) == expected
    # The distiller shares one retriever across event loops and closes each loop's clients: closing a
    # loop's side keeps the index open for the next; close() is what ends it.
    assert asyncio.run(go()) == expected
    retriever.close()
    with pytest.raises(RetrievalError, match="closed"):
        retriever.search_batch(["paris"], 1)


def test_pickles_as_a_reopen_of_the_index(retriever: BM25Retriever) -> None:
    data = pickle.dumps(retriever)
    assert len(data) < 1000  # the path and hash, not the arrays
    with pickle.loads(data) as copy:
        assert not copy.built
        assert copy.search_batch(["zyzzyva"], 1) == retriever.search_batch(["zyzzyva"], 1)


def test_closed_retriever_raises_retrieval_error(retriever: BM25Retriever) -> None:
    retriever.close()
    with pytest.raises(RetrievalError, match="closed"):
        retriever.search_batch(["paris"], 1)


def test_top_k_breaks_ties_by_passage_order() -> None:
    scores = np.array([0.0, 2.0, 1.0, 2.0, 0.0, 3.0], dtype=np.float32)
    assert bm25.top_k(scores, 3) == [(5, 3.0), (1, 2.0), (3, 2.0)]
    assert bm25.top_k(scores, 10) == [(5, 3.0), (1, 2.0), (3, 2.0), (2, 1.0)]


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("density", [0.0005, 0.05, 1.0])
def test_top_k_matches_a_full_sort(k: int, density: float) -> None:
    rng = np.random.default_rng(k)
    scores = (rng.integers(1, 40, 50_000) * (rng.random(50_000) < density)).astype(np.float32)  # many ties
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    expected = [(int(i), float(scores[i])) for i in order if scores[i] > 0]
    assert bm25.top_k(scores, k) == expected
