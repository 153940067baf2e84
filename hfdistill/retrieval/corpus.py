"""A Search-R1 JSONL corpus as values: one passage per line, parsed strictly (errors name the file
and line), and the analysis of text into terms.

Terms follow Lucene's English analyzer, as Search-R1's pyserini BM25 index does: lowercase,
Lucene's 33 English stopwords, Snowball English (Porter2) stems when PyStemmer is installed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from bm25s.stopwords import STOPWORDS_EN

from hfdistill.core.errors import CorpusError
from hfdistill.core.types import Document

try:
    import Stemmer
except ImportError:  # optional: without it terms are not stemmed (recorded in the manifest)
    Stemmer = None

__all__ = ["Analyzer", "Stemmer", "parse_passage"]

_TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")  # bm25s's and scikit-learn's default word pattern


# ---------------------------------------------------------------- passages


def parse_passage(raw: bytes | str, where: str) -> Document:
    """Parse one corpus line into a Document; `where` (e.g. `corpus.jsonl line 17`) prefixes errors."""
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorpusError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CorpusError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    doc_id = _passage_id(obj, where)
    if "contents" in obj:
        contents = _string_field(obj, "contents", where)
        title, _, text = contents.partition("\n")
        return Document(id=doc_id, title=_unquote(title), text=text, contents=contents)
    if "title" in obj and "text" in obj:
        title = _unquote(_string_field(obj, "title", where))
        text = _string_field(obj, "text", where)
        return Document(id=doc_id, title=title, text=text, contents=f'"{title}"\n{text}')
    raise CorpusError(f'{where}: missing "contents" (or "title"+"text")')


def _passage_id(obj: dict[str, Any], where: str) -> str:
    if "id" not in obj:
        raise CorpusError(f'{where}: missing "id"')
    value = obj["id"]
    # Integer ids are common in hand-made corpora and convert without ambiguity.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CorpusError(f'{where}: "id" must be a string or an integer, got {type(value).__name__}')
    return str(value)


def _string_field(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise CorpusError(f'{where}: "{key}" must be a string, got {type(value).__name__}')
    return value


def _unquote(title: str) -> str:
    title = title.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        return title[1:-1]
    return title


# ---------------------------------------------------------------- terms


class Analyzer:
    """Text -> terms: lowercase, \\w\\w+ words, minus stopwords, stemmed when PyStemmer is there."""

    def __init__(self) -> None:
        self._stopwords = frozenset(STOPWORDS_EN)
        self._stemmer = Stemmer.Stemmer("english") if Stemmer is not None else None

    @property
    def spec(self) -> dict[str, Any]:
        """What the manifest records: an index built by another analyzer is rebuilt."""
        stemmer = "snowball-english" if self._stemmer is not None else None
        return {"pattern": _TOKEN_RE.pattern, "stopwords": "lucene-en-33", "stemmer": stemmer}

    @staticmethod
    def words(text: str) -> list[str]:
        """The lowercase words of `text`, before stopwords and stems."""
        return _TOKEN_RE.findall(text.lower())

    def terms(self, text: str) -> list[str]:
        words = [w for w in self.words(text) if w not in self._stopwords]
        return self._stemmer.stemWords(words) if self._stemmer is not None else words

    def term_ids(self, text: str, vocab: dict[str, int]) -> list[int]:
        """Ids of the known terms of a query; unknown terms cannot match anything."""
        return [vocab[t] for t in self.terms(text) if t in vocab]
