"""The documents of a corpus, for the `open` tool: found by a passage's id or by a title, read by byte span.

A passage's document is every passage with its title, in corpus order (an article of wiki-18, whose
100-word passages are consecutive lines); a passage without a title is a document by itself. Titles are
matched without regard to case, spacing or surrounding quotes.

Two tables map 64-bit hashes of ids and of titles to rows, sorted. They are built in one pass over the
corpus, cached beside its index (valid while the corpus's content hash is the same) and memory-mapped
when read, so a corpus the size of wiki-18 costs no memory. A hash only points: every passage read is
checked against what was asked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hfdistill.core.atomic import atomic_path, atomic_write_text
from hfdistill.core.errors import CorpusError, RetrievalError
from hfdistill.core.tools import OpenedDocument
from hfdistill.core.types import Document
from hfdistill.retrieval.corpus import parse_passage

__all__ = ["Documents", "title_key"]

log = logging.getLogger(__name__)

FORMAT = 1
_TABLES = ("id_keys", "id_rows", "title_keys", "title_rows")


def title_key(title: str) -> str:
    """A title as it is matched: quotes around it, case and runs of spaces do not count."""
    title = title.strip()
    if len(title) >= 2 and title[0] == title[-1] and title[0] in "\"'":
        title = title[1:-1]
    return " ".join(title.split()).casefold()


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class _Tables:
    id_keys: np.ndarray  # uint64, sorted
    id_rows: np.ndarray  # int64, the row of each key
    title_keys: np.ndarray
    title_rows: np.ndarray  # ascending within one key

    @staticmethod
    def rows(keys: np.ndarray, rows: np.ndarray, text: str) -> list[int]:
        h = np.uint64(_hash(text))
        lo, hi = np.searchsorted(keys, h, "left"), np.searchsorted(keys, h, "right")
        return [int(r) for r in rows[lo:hi]]


class Documents:
    """Open documents of one corpus file (see the module docstring)."""

    def __init__(self, corpus: Path, spans: np.ndarray, tables: _Tables) -> None:
        self.corpus, self.spans, self._tables = corpus, spans, tables
        self._fd: int | None = os.open(corpus, os.O_RDONLY)

    @classmethod
    def load(cls, corpus: Path, spans: np.ndarray, full_hash: str, cache_dir: Path) -> Documents:
        """The documents of `corpus` (numbered by `spans`), their tables read from `cache_dir` or built there."""
        tables = _read_tables(cache_dir, full_hash, len(spans))
        if tables is None:
            tables = _build_tables(corpus, len(spans))
            _write_tables(cache_dir, tables, full_hash)
        return cls(corpus, spans, tables)

    def open_now(self, key: str, max_chars: int) -> OpenedDocument | None:
        """The document of the passage with id `key`, else of the title `key`; None when there is neither."""
        key = key.strip()
        found = next((d for d in (self._passage(r) for r in _Tables.rows(self._tables.id_keys, self._tables.id_rows,
                                                                        key)) if d.id == key), None)
        wanted = title_key(found.title if found is not None else key)
        rows = _Tables.rows(self._tables.title_keys, self._tables.title_rows, wanted) if wanted else []
        passages = (d for d in map(self._passage, rows) if title_key(d.title) == wanted)
        document = _read_until(passages, max_chars)
        if document is None and found is not None:  # a passage without a title is a document by itself
            document = _read_until(iter([found]), max_chars)
        return document

    async def open(self, key: str, max_chars: int) -> OpenedDocument | None:
        """`open_now` in a worker thread (it reads the corpus file)."""
        return await asyncio.to_thread(self.open_now, key, max_chars)

    def _passage(self, row: int) -> Document:
        start, end = (int(x) for x in self.spans[row])
        if self._fd is None:
            raise RetrievalError("the corpus's documents are closed")
        try:
            raw = os.pread(self._fd, end - start, start)
        except OSError as e:
            raise RetrievalError(f"cannot read passage {row} from {self.corpus}: {e}") from None
        return parse_passage(raw, f"{self.corpus} passage {row}")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_until(passages: Iterator[Document], max_chars: int) -> OpenedDocument | None:
    """The passages' texts joined, cut at `max_chars`; passages past the cut are not read (one is, to know
    there is more). None when there are no passages."""
    texts: list[str] = []
    title, size, more = "", 0, False
    for passage in passages:
        if size >= max_chars:
            more = True
            break
        title = title or passage.title
        texts.append(passage.text)
        size += len(passage.text) + 1
    if not texts:
        return None
    full = "\n".join(texts)
    return OpenedDocument(title=title, text=full[:max_chars], passages=len(texts), cut=more or len(full) > max_chars)


def _build_tables(corpus: Path, rows: int) -> _Tables:
    """One pass over the corpus: the hash of every passage's id and title (its non-blank lines are its rows)."""
    log.info("indexing the documents of %s for the open tool (once; cached beside its index)", corpus)
    id_keys = np.empty(rows, np.uint64)
    title_keys = np.empty(rows, np.uint64)
    row = 0
    with corpus.open("rb") as f, tqdm(total=rows, unit="passages", desc=f"documents of {corpus.name}", disable=None,
                                      leave=False) as bar:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if row == rows:
                raise CorpusError(f"{corpus} has more passages than when it was numbered; it changed: try again")
            doc = parse_passage(line, f"{corpus} line {number}")
            id_keys[row], title_keys[row] = _hash(doc.id), _hash(title_key(doc.title))
            row += 1
            if row % 65536 == 0 or row == rows:
                bar.update(row - bar.n)
    if row != rows:
        raise CorpusError(f"{corpus} has {row} passages, not the {rows} it was numbered with; it changed: try again")
    ids, titles = np.argsort(id_keys, kind="stable"), np.argsort(title_keys, kind="stable")
    return _Tables(id_keys[ids], ids.astype(np.int64), title_keys[titles], titles.astype(np.int64))


def _read_tables(cache_dir: Path, full_hash: str, rows: int) -> _Tables | None:
    try:
        meta = json.loads((cache_dir / "meta.json").read_text())
        if meta.get("format") != FORMAT or meta.get("full_hash") != full_hash or meta.get("rows") != rows:
            return None
        arrays = [np.load(cache_dir / f"{name}.npy", mmap_mode="r") for name in _TABLES]
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring the unreadable document tables in %s (%s); building them again", cache_dir, e)
        return None
    if any(len(a) != rows for a in arrays):
        return None
    return _Tables(*arrays)


def _write_tables(cache_dir: Path, tables: _Tables, full_hash: str) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for name in _TABLES:
            with atomic_path(cache_dir / f"{name}.npy") as tmp, tmp.open("wb") as f:
                np.save(f, getattr(tables, name))
        meta = {"format": FORMAT, "full_hash": full_hash, "rows": len(tables.id_keys)}
        atomic_write_text(cache_dir / "meta.json", json.dumps(meta))
    except OSError as e:
        log.warning("cannot cache the document tables in %s (%s); they are built again next time", cache_dir, e)
