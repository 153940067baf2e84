"""A corpus as numbered rows: spans of its non-blank lines, found in one pass, cached while the file is unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hfdistill.core.errors import CorpusError
from hfdistill.retrieval import corpus_rows
from hfdistill.retrieval.corpus_rows import CorpusRows, scan_spans
from hfdistill.retrieval.fingerprint import full_hash
from tests.corpus_util import CITIES, write_jsonl


@pytest.mark.parametrize(("text", "rows"), [
    pytest.param('{"id": 1, "contents": "a"}\n{"id": 2, "contents": "b"}\n', 2, id="plain"),
    pytest.param('{"id": 1, "contents": "a"}\n\n  \n{"id": 2, "contents": "b"}\r\n\n', 2, id="blank-lines-skipped"),
    pytest.param('{"id": 1, "contents": "a"}\n{"id": 2, "contents": "b"}', 2, id="no-final-newline"),
])
def test_spans_cover_the_passages_and_the_hash_the_whole_file(tmp_path: Path, text: str, rows: int) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(text.encode())
    scan = scan_spans(path)
    assert len(scan.spans) == rows and scan.full_hash == full_hash(path)
    found = CorpusRows(path, scan.spans, scan.full_hash)
    assert [found.document(i, 0.5).id for i in range(rows)] == ["1", "2"]


def test_spans_across_read_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus_rows, "_BLOCK", 7)  # lines straddle many blocks
    path = write_jsonl(tmp_path / "c.jsonl", CITIES)
    rows = CorpusRows.load(path, None)
    assert [rows.document(i, 0.0).title for i in range(len(rows))] == ["Paris", "Berlin", "Madrid", "Zyzzyva", "Lyon",
                                                                      "Kyoto"]
    assert rows.contents(1, 3) == [c["contents"] for c in CITIES[1:3]]


def test_the_cache_is_reused_until_the_corpus_changes(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", CITIES)
    first = CorpusRows.load(path, tmp_path / "cache")
    cached = np.load(tmp_path / "cache" / "rows.npy")
    np.save(tmp_path / "cache" / "rows.npy", cached[::-1].copy())  # a marker: a reused cache returns it as is
    assert CorpusRows.load(path, tmp_path / "cache").spans[0].tolist() == cached[-1].tolist()
    os.utime(path, ns=(1, 1))  # touched, same content: still reused (by the full hash)
    assert CorpusRows.load(path, tmp_path / "cache").spans[0].tolist() == cached[-1].tolist()
    write_jsonl(path, CITIES[:3])
    again = CorpusRows.load(path, tmp_path / "cache")
    assert len(again) == 3 and again.full_hash != first.full_hash


def test_an_empty_corpus_and_a_missing_one(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(CorpusError, match="has no passages"):
        CorpusRows.load(tmp_path / "empty.jsonl", None)
    with pytest.raises(CorpusError, match="not found"):
        CorpusRows.load(tmp_path / "nope.jsonl", None)
