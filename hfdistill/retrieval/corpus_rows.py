"""A JSONL corpus as numbered rows: row i is its i-th non-blank line (as faiss row i of an index built
from it), read back by byte span. One pass over the file finds every span and hashes the content; the
spans are cached beside the index (or the corpus) and reused while the file is unchanged.

Memory is 16 bytes a passage (wiki-18: 320 MiB), never the corpus text.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hfdistill.core.atomic import atomic_path, atomic_write_text
from hfdistill.core.errors import CorpusError, RetrievalError
from hfdistill.core.types import Document
from hfdistill.retrieval.corpus import parse_passage
from hfdistill.retrieval.fingerprint import CorpusFingerprint, content_hasher, same_corpus

__all__ = ["CorpusRows", "scan_spans"]

log = logging.getLogger(__name__)

_BLOCK = 1 << 26  # 64 MiB read at a time while scanning
ROWS_FORMAT = 1


@dataclass(frozen=True)
class _Scan:
    spans: np.ndarray  # (rows, 2) int64: start, end (end excludes the newline)
    full_hash: str


def scan_spans(corpus: Path) -> _Scan:
    """Byte spans of the non-blank lines of `corpus`, and the hash of all its bytes, in one pass."""
    digest = content_hasher()
    starts, ends = [], []
    offset, line_start = 0, 0
    with corpus.open("rb") as f, tqdm(total=corpus.stat().st_size, unit="B", unit_scale=True,
                                      desc=f"reading {corpus.name}", disable=None, leave=False) as bar:
        while block := f.read(_BLOCK):
            digest.update(block)
            newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10) + offset
            starts.append(np.concatenate(([line_start], newlines[:-1] + 1)) if len(newlines) else np.empty(0, np.int64))
            ends.append(newlines)
            if len(newlines):
                line_start = int(newlines[-1]) + 1
            offset += len(block)
            bar.update(len(block))
    spans = np.stack([np.concatenate(starts), np.concatenate(ends)], axis=1).astype(np.int64) if starts \
        else np.empty((0, 2), np.int64)
    if line_start < offset:  # a last line without a newline
        spans = np.concatenate([spans, [[line_start, offset]]])
    return _Scan(_drop_blank(corpus, spans), digest.hexdigest())


def _drop_blank(corpus: Path, spans: np.ndarray) -> np.ndarray:
    """Blank lines (a trailing newline, `\\r\\n`) are not passages; only short lines can be blank."""
    short = np.flatnonzero(spans[:, 1] - spans[:, 0] <= 8)
    if not len(short):
        return spans
    blank = []
    with corpus.open("rb") as f:
        for i in short:
            f.seek(spans[i, 0])
            if not f.read(int(spans[i, 1] - spans[i, 0])).strip():
                blank.append(i)
    return np.delete(spans, blank, axis=0)


class CorpusRows:
    """Rows of a corpus file by number, read with `pread` from a descriptor opened once."""

    def __init__(self, corpus: Path, spans: np.ndarray, full_hash: str) -> None:
        self.corpus, self.spans, self.full_hash = corpus, spans, full_hash
        self._fd: int | None = os.open(corpus, os.O_RDONLY)

    @classmethod
    def load(cls, corpus: Path, cache_dir: Path | None) -> CorpusRows:
        """The rows of `corpus`, from `cache_dir` when it holds them for this very file, else scanned (and
        cached there when it can be written)."""
        if not corpus.is_file():
            raise CorpusError(f"corpus file not found: {corpus}")
        cached = _read_cache(cache_dir, corpus) if cache_dir is not None else None
        if cached is not None:
            return cls(corpus, *cached)
        log.info("numbering the passages of %s (once; cached in %s)", corpus, cache_dir)
        before = CorpusFingerprint.of(corpus)
        scan = scan_spans(corpus)
        if not len(scan.spans):
            raise CorpusError(f"{corpus}: the corpus has no passages; expected one JSON object per line")
        if CorpusFingerprint.of(corpus) != before:
            raise CorpusError(f"{corpus}: the file changed while it was being read; try again")
        if cache_dir is not None:
            _write_cache(cache_dir, scan, before)
        return cls(corpus, scan.spans, scan.full_hash)

    def __len__(self) -> int:
        return len(self.spans)

    def document(self, row: int, score: float) -> Document:
        start, end = (int(x) for x in self.spans[row])
        if self._fd is None:
            raise RetrievalError("the dense retriever is closed")
        try:
            raw = os.pread(self._fd, end - start, start)
        except OSError as e:
            raise RetrievalError(f"cannot read passage {row} from {self.corpus}: {e}") from None
        doc = parse_passage(raw, f"{self.corpus} line of passage {row}")
        return Document(id=doc.id, title=doc.title, text=doc.text, contents=doc.contents, score=score)

    def contents(self, first: int, last: int) -> list[str]:
        """The `contents` of rows first..last-1 (what Search-R1 encodes), read in one sequential go."""
        start, end = int(self.spans[first, 0]), int(self.spans[last - 1, 1])
        with self.corpus.open("rb") as f:
            f.seek(start)
            block = f.read(end - start)
        out = []
        for row in range(first, last):
            s, e = int(self.spans[row, 0]) - start, int(self.spans[row, 1]) - start
            out.append(parse_passage(block[s:e], f"{self.corpus} passage {row}").contents)
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_cache(cache_dir: Path, corpus: Path) -> tuple[np.ndarray, str] | None:
    try:
        meta: dict[str, Any] = json.loads((cache_dir / "rows.json").read_text())
        if meta.get("format") != ROWS_FORMAT or not same_corpus(meta, corpus)[0]:
            return None
        spans = np.load(cache_dir / "rows.npy")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring the unreadable passage numbering in %s (%s)", cache_dir, e)
        return None
    if len(spans) != meta.get("rows"):
        return None
    return spans, str(meta["full_hash"])


def _write_cache(cache_dir: Path, scan: _Scan, fp: CorpusFingerprint) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache_dir / "rows.npy") as tmp, tmp.open("wb") as f:
            np.save(f, scan.spans)
        meta = {"format": ROWS_FORMAT, **fp.fields(), "full_hash": scan.full_hash, "rows": len(scan.spans)}
        atomic_write_text(cache_dir / "rows.json", json.dumps(meta, indent=1))
    except OSError as e:
        log.warning("cannot cache the passage numbering in %s (%s); it is made again next time", cache_dir, e)
