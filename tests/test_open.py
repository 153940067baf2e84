"""`open`: a document of the embedded corpus by a passage's id or a title, read by byte span; the tool's arguments;
and `generate --tools search,open` end to end, opening an id a search showed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hfdistill.cli.main import main
from hfdistill.core.errors import CorpusError
from hfdistill.core.tools import OpenedDocument, ToolArgumentError
from hfdistill.retrieval.bm25 import BM25Retriever
from hfdistill.retrieval.documents import Documents, title_key
from hfdistill.tools.open import OpenTool
from tests.conftest import record_of
from tests.corpus_util import write_jsonl
from tests.fakes import Answer, CallTool, FakeTeacher, Search, Served
from tests.verl_rules import check_output

# An article in three consecutive passages (as wiki-18 splits one), another article, a passage without a title.
CORPUS = [
    {"id": "10", "contents": '"Seine"\nThe Seine is a river in northern France.'},
    {"id": "11", "contents": '"Seine"\nIt flows through Paris.'},
    {"id": "12", "contents": '"Seine"\nIt ends in the English Channel at Le Havre.'},
    {"id": "20", "contents": '"Paris"\nParis is the capital of France.'},
    {"id": "30", "title": "", "text": "A passage that belongs to no article."},
    {"id": "40", "contents": '"Loire"\nThe Loire is the longest river of France.'},
]
SEINE = "The Seine is a river in northern France.\nIt flows through Paris.\nIt ends in the English Channel at Le Havre."


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", CORPUS)


@pytest.fixture
def documents(corpus: Path) -> Iterator[Documents]:
    with BM25Retriever.load(corpus) as retriever:
        yield retriever.documents()


@pytest.mark.parametrize(("key", "title", "text"), [
    pytest.param("11", "Seine", SEINE, id="a-passage-id-opens-its-article"),
    pytest.param("Seine", "Seine", SEINE, id="a-title"),
    pytest.param('  "seine" ', "Seine", SEINE, id="a-title-quoted-in-another-case"),
    pytest.param("30", "", "A passage that belongs to no article.", id="a-passage-without-a-title-alone"),
    pytest.param("Paris", "Paris", "Paris is the capital of France.", id="a-one-passage-article"),
])
def test_a_document_is_found_by_id_or_title(documents: Documents, key: str, title: str, text: str) -> None:
    assert documents.open_now(key, 10_000) == OpenedDocument(title, text, passages=text.count("\n") + 1, cut=False)


@pytest.mark.parametrize("key", ["99", "Rhine", "", "Seine river"])
def test_what_the_corpus_does_not_hold_is_none(documents: Documents, key: str) -> None:
    assert documents.open_now(key, 10_000) is None


def test_a_long_document_is_cut_and_says_so(documents: Documents) -> None:
    cut = documents.open_now("Seine", 50)
    assert cut == OpenedDocument("Seine", SEINE[:50], passages=2, cut=True)  # the third passage was never read
    assert documents.open_now("Seine", len(SEINE)) == OpenedDocument("Seine", SEINE, passages=3, cut=False)


def test_the_tables_are_cached_beside_the_index_and_rebuilt_for_another_corpus(corpus: Path) -> None:
    with BM25Retriever.load(corpus) as retriever:
        retriever.documents()
        tables = retriever.index_dir / "documents"
        written = {p.name: p.stat().st_mtime_ns for p in tables.iterdir()}
    assert set(written) == {"meta.json", "id_keys.npy", "id_rows.npy", "title_keys.npy", "title_rows.npy"}
    with BM25Retriever.load(corpus) as retriever:
        assert retriever.documents().open_now("40", 100) is not None
    assert {p.name: p.stat().st_mtime_ns for p in tables.iterdir()} == written  # read, not built again
    write_jsonl(corpus, [*CORPUS, {"id": "50", "contents": '"Rhine"\nThe Rhine flows to the North Sea.'}])
    with BM25Retriever.load(corpus) as retriever:
        assert retriever.documents().open_now("Rhine", 100) == OpenedDocument(
            "Rhine", "The Rhine flows to the North Sea.", passages=1, cut=False)


def test_a_corpus_that_changed_under_its_numbering_is_refused(corpus: Path, tmp_path: Path) -> None:
    with BM25Retriever.load(corpus) as retriever:
        spans, digest = retriever._spans, retriever.corpus_hash
    write_jsonl(corpus, CORPUS[:2])
    with pytest.raises(CorpusError, match="it changed"):
        Documents.load(corpus, spans, digest, tmp_path / "tables")


@pytest.mark.parametrize(("raw", "document"), [
    pytest.param({"document": "Seine"}, "Seine", id="ours"),
    pytest.param({"title": " Seine "}, "Seine", id="a-title"),
    pytest.param({"id": 11}, "11", id="an-integer-id"),
    pytest.param({"url": ["Seine", "Paris"]}, "Seine", id="tongyis-visit-opens-the-first"),
])
def test_open_takes_a_document_under_the_names_agents_use(raw: dict, document: str) -> None:
    assert OpenTool().arguments(raw) == {"document": document}


@pytest.mark.parametrize("raw", [{}, {"document": ""}, {"document": ["", 3.5]}, {"query": "Seine"}, {"id": True}])
def test_open_without_a_document_is_the_models_mistake(raw: dict) -> None:
    with pytest.raises(ToolArgumentError, match='open needs "document"'):
        OpenTool().arguments(raw)


def test_title_keys_ignore_quotes_case_and_spacing() -> None:
    assert title_key(' "Le  Havre" ') == title_key("le havre") == "le havre"


# ---------------------------------------------------------------- end to end


def test_search_then_open_an_id_the_search_showed(teacher: tuple[FakeTeacher, Served], corpus: Path,
                                                  tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "tool_observation.j2").write_text(  # an observation that shows each document's id
        "{% for r in results %}{% for d in r.documents %}[{{ d.id }}] {{ d.title }}: {{ d.text }}\n"
        "{% endfor %}{% endfor %}")
    fake = teacher[0]
    q = "Where does the Seine end?"
    fake.script(q, Search(["Seine Paris"]), CallTool("open", {"document": "11"}), CallTool("open", {"id": "Rhine"}),
                Answer("Le Havre"))
    inp = write_jsonl(tmp_path / "in.jsonl", [{"question": q, "golden_answers": ["Le Havre"]}])
    out = tmp_path / "o.parquet"
    assert main(["generate", "--vllm_url", f"{teacher[1].url}/v1", "--corpus", str(corpus), "--input_file", str(inp),
                 "--output_file", str(out), "--tools", "search,open", "--open-max-chars", "80", "--template-dir",
                 str(templates), "--max_assistant_turns", "4", "-q"]) == 0
    assert [t["function"]["name"] for t in fake.requests[0]["tools"]] == ["search", "open"]
    [row] = check_output(out)
    searched, opened, missing = (m["content"] for m in row["messages"] if m["role"] == "tool")
    assert "[11] Seine: It flows through Paris." in searched
    assert opened == f"Title: Seine\n{SEINE[:80]}\n[The document is longer: cut at 80 characters.]"
    assert missing.startswith('Error: no document has the id or title "Rhine"')
    assert row["tool_calls_by_name"] == [{"name": "search", "calls": 1}, {"name": "open", "calls": 2}]
    assert row["num_tool_errors"] == 1  # the document that is not there
    assert row["tools"] == [] and '"name": "open"' in row["messages"][0]["content"]
    options = record_of(out).generation_options
    assert [t["name"] for t in options.tools or ()] == ["search", "open"]
    assert [t.get("max_chars") for t in options.tools or ()] == [None, 80]


def test_open_without_a_corpus_is_one_line(teacher: tuple[FakeTeacher, Served], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", [{"question": "q?", "golden_answers": []}])
    assert main(["generate", "--vllm_url", f"{teacher[1].url}/v1", "--input_file", str(inp), "--output_file",
                 str(tmp_path / "o.parquet"), "--tools", "search,open"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --tools open reads the documents of the embedded corpus: pass --corpus (BM25, dense or hybrid); "
        "a retrieval server's documents cannot be opened")
    assert not teacher[0].probes


def test_open_max_chars_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--input_file", str(tmp_path / "x.jsonl"), "--open-max-chars", "0"]) == 2
    assert "--open-max-chars must be >= 1, got 0" in capsys.readouterr().err

