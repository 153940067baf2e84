"""The BM25 index of a Search-R1 JSONL corpus: building it and reusing the index directory
(`manifest.json` written last, the whole directory swapped in at once), with Anserini's k1=0.9,
b=0.4. Passages and terms are `retrieval.corpus`'s.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bm25s
import numpy as np

from hfdistill.core.atomic import atomic_write_text, fsync
from hfdistill.core.errors import ConfigError, CorpusError
from hfdistill.retrieval.corpus import Analyzer, parse_passage
from hfdistill.retrieval.fingerprint import CorpusFingerprint, content_hasher, full_hash, same_corpus

__all__ = ["build_index", "full_hash", "reusable"]

logger = logging.getLogger(__name__)

INDEX_FORMAT = 1
BM25_PARAMS = {"method": "lucene", "k1": 0.9, "b": 0.4}
_PROGRESS_EVERY_S = 5.0


class _VocabBuilder:
    """Grows the term vocabulary during a build, caching word -> term id (or -1 for a stopword)."""

    def __init__(self, analyzer: Analyzer) -> None:
        self._analyzer = analyzer
        self.vocab: dict[str, int] = {}
        self._word_ids: dict[str, int] = {}

    def ids(self, text: str) -> list[int]:
        cache = self._word_ids
        out = []
        for word in self._analyzer.words(text):
            tid = cache.get(word)
            if tid is None:
                tid = cache[word] = self._new_word(word)
            if tid >= 0:
                out.append(tid)
        return out

    def _new_word(self, word: str) -> int:
        terms = self._analyzer.terms(word)
        if not terms:
            return -1
        return self.vocab.setdefault(terms[0], len(self.vocab))


# ---------------------------------------------------------------- build


@dataclass(slots=True)
class _Scan:
    """One pass over the corpus: passage byte spans, term ids per passage (flat), vocabulary, hash."""

    spans: np.ndarray
    token_ids: np.ndarray
    token_indptr: np.ndarray
    vocab: dict[str, int]
    full_hash: str


class _TokenIdDocs(Sequence):
    """The term ids of passage i as a list, made on demand: bm25s wants lists, memory wants one array."""

    def __init__(self, flat: np.ndarray, indptr: np.ndarray) -> None:
        self._flat, self._indptr = flat, indptr

    def __len__(self) -> int:
        return len(self._indptr) - 1

    def __getitem__(self, i):  # type: ignore[override]
        return self._flat[self._indptr[i] : self._indptr[i + 1]].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(len(self)):
            yield self[i]


def _scan_corpus(corpus: Path, analyzer: Analyzer) -> _Scan:
    builder = _VocabBuilder(analyzer)
    spans, tokens, indptr = array("q"), array("i"), array("q", [0])
    digest = content_hasher()
    progress = _Progress(corpus)
    offset = 0
    with corpus.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            digest.update(line)
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue  # blank lines (a trailing newline, say) are not passages
            doc = parse_passage(line, f"{corpus} line {lineno}")
            tokens.extend(builder.ids(doc.contents))
            indptr.append(len(tokens))
            spans.extend((start, offset))
            progress.tick(len(indptr) - 1, offset)
    if len(indptr) == 1:
        raise CorpusError(f"{corpus}: the corpus has no passages; expected one JSON object per line")
    return _Scan(
        spans=np.frombuffer(spans, dtype=np.int64).reshape(-1, 2),
        token_ids=np.frombuffer(tokens, dtype=np.int32),
        token_indptr=np.frombuffer(indptr, dtype=np.int64),
        vocab=builder.vocab,
        full_hash=digest.hexdigest(),
    )


class _Progress:
    """Logs indexing progress at most every few seconds."""

    def __init__(self, corpus: Path) -> None:
        self._corpus, self._total = corpus, max(1, corpus.stat().st_size)
        self._t0 = self._last = time.monotonic()

    def tick(self, passages: int, done_bytes: int) -> None:
        now = time.monotonic()
        if now - self._last < _PROGRESS_EVERY_S:
            return
        self._last = now
        logger.info("indexing %s: %d passages, %.0f%% of the file, %.0fs", self._corpus.name, passages,
                    100 * done_bytes / self._total, now - self._t0)


def _build_model(scan: _Scan) -> bm25s.BM25:
    model = bm25s.BM25(**BM25_PARAMS)
    docs = _TokenIdDocs(scan.token_ids, scan.token_indptr)
    vocab = scan.vocab or {"": 0}  # bm25s needs one column even when every passage is stopwords
    # Passages with no terms have length 0 (0/0 when all are empty); they get no scores, so no warning.
    with np.errstate(divide="ignore", invalid="ignore"):
        model.scores = model.build_index_from_ids(list(vocab.values()), docs, show_progress=False)
    model.vocab_dict = vocab
    model.unique_token_ids_set = set(vocab.values())
    return model


def build_index(corpus: Path, index_dir: Path) -> None:
    """Index `corpus` into a temp dir beside `index_dir`, then swap it in: a killed build leaves no index."""
    t0 = time.monotonic()
    before = CorpusFingerprint.of(corpus)
    analyzer = Analyzer()
    scan = _scan_corpus(corpus, analyzer)
    logger.info("indexing %s: %d passages read, computing BM25 scores", corpus.name, len(scan.spans))
    model = _build_model(scan)
    if CorpusFingerprint.of(corpus) != before:
        raise CorpusError(f"{corpus}: the file changed while it was being indexed; try again")
    tmp = _make_temp_dir(index_dir)
    try:
        model.save(str(tmp), show_progress=False)
        np.save(tmp / "spans.npy", scan.spans)
        manifest = _manifest(corpus, before, scan, analyzer, time.monotonic() - t0)
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1))  # last: marks the index complete
        fsync(tmp)
        _swap_in(tmp, index_dir)
    except OSError as e:
        raise ConfigError(f"cannot write the BM25 index {index_dir}: {e}; free space or pass --index-dir") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left when something failed before the swap
    logger.info("indexed %s: %d passages in %.1fs -> %s", corpus.name, len(scan.spans),
                time.monotonic() - t0, index_dir)


def _make_temp_dir(index_dir: Path) -> Path:
    try:
        index_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.tmp-", dir=index_dir.parent))
    except OSError as e:
        raise ConfigError(f"cannot write the BM25 index next to {index_dir}: {e}; pass --index-dir") from None


def _swap_in(tmp: Path, index_dir: Path) -> None:
    old = None
    if index_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.old-", dir=index_dir.parent))
        os.replace(index_dir, old)
    os.replace(tmp, index_dir)
    fsync(index_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _manifest(corpus: Path, fp: CorpusFingerprint, scan: _Scan, analyzer: Analyzer, seconds: float) -> dict:
    return {
        "format": INDEX_FORMAT,
        "corpus": str(corpus.resolve()),
        "size": fp.size,
        "mtime_ns": fp.mtime_ns,
        "sample_hash": fp.sample_hash,
        "full_hash": scan.full_hash,
        "documents": len(scan.spans),
        "analyzer": analyzer.spec,
        "bm25": BM25_PARAMS,
        "bm25s_version": bm25s.__version__,
        "build_seconds": round(seconds, 2),
        "built_at": time.time(),
    }


# ---------------------------------------------------------------- reuse


def reusable(index_dir: Path, corpus: Path) -> bool:
    """True when `index_dir` holds a complete index of this exact corpus file, built by this analyzer."""
    manifest = _read_manifest(index_dir)
    if manifest is None:
        return False
    wanted = {"format": INDEX_FORMAT, "analyzer": Analyzer().spec, "bm25": BM25_PARAMS}
    if any(manifest.get(k) != v for k, v in wanted.items()):
        logger.info("index %s was built with other settings; rebuilding", index_dir)
        return False
    same, fp = same_corpus(manifest, corpus)
    if same and (fp.mtime_ns, fp.sample_hash) != (manifest.get("mtime_ns"), manifest.get("sample_hash")):
        manifest.update(mtime_ns=fp.mtime_ns, sample_hash=fp.sample_hash)
        atomic_write_text(index_dir / "manifest.json", json.dumps(manifest, indent=1))
    return same


def _read_manifest(index_dir: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((index_dir / "manifest.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable index manifest in %s: %s", index_dir, e)
        return None
    return manifest if isinstance(manifest, dict) else None


