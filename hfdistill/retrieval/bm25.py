"""Embedded BM25 retriever over a Search-R1 JSONL corpus, built on bm25s.

The index lives in a directory (default `<corpus>.bm25s/`, see `bm25_index`) holding the bm25s
sparse matrix, the byte span of every passage in the corpus file, and `manifest.json`. Passages
are read back from the corpus by byte span at query time, so memory holds the score matrix and
vocabulary but never the corpus text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bm25s
import numpy as np

from hfdistill.core.errors import ConfigError, CorpusError, RetrievalError
from hfdistill.core.types import Document
from hfdistill.retrieval.bm25_index import build_index, reusable
from hfdistill.retrieval.corpus import Analyzer, Stemmer, parse_passage
from hfdistill.retrieval.documents import Documents

__all__ = ["BM25Retriever", "Stemmer", "parse_passage", "top_k"]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- retriever


def top_k(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """(index, score) of the `k` best positive scores, best first, ties in passage order.

    Not bm25s's `retrieve`: its `argpartition(scores, -k)` over all passages takes ~2.4 ms at 100k
    mostly-zero scores (numpy 2.4); narrowing to candidates first takes ~0.1 ms (benchmarks/bench_bm25.py).
    """
    cand = _candidates(scores, k)
    sub = scores[cand]
    if len(cand) > k:
        kth = -np.partition(-sub, k - 1)[k - 1]
        keep = sub >= kth  # every tie at the boundary, so the lexsort below decides by passage order
        cand, sub = cand[keep], sub[keep]
    order = np.lexsort((cand, -sub))[:k]
    return [(int(cand[i]), float(sub[i])) for i in order]


def _candidates(scores: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Indices of a superset of the top k positive scores, usually a few dozen.

    k blocks have a maximum >= the k-th largest block maximum, so at least k scores reach it.
    """
    n_blocks = len(scores) // block
    floor = 0.0
    if n_blocks > k:
        maxima = scores[: n_blocks * block].reshape(n_blocks, block).max(axis=1)
        floor = float(np.partition(maxima, n_blocks - k)[n_blocks - k])
    return np.flatnonzero(scores >= floor) if floor > 0 else np.flatnonzero(scores > 0)


class BM25Retriever:
    """BM25 search over a corpus file; `search`/`aclose` make it a Retriever for the rollout loop."""

    def __init__(self, corpus: Path, index_dir: Path, *, built: bool) -> None:
        self.corpus = corpus
        self.index_dir = index_dir
        self.built = built  # True when this load (re)built the index rather than reusing it
        self.manifest: dict[str, Any] = json.loads((index_dir / "manifest.json").read_text())
        self._model = bm25s.BM25.load(str(index_dir), show_progress=False)
        self._spans = np.load(index_dir / "spans.npy")
        self._analyzer = Analyzer()
        # An fd opened now keeps reading this file even if the path is later replaced by a rename.
        self._fd: int | None = os.open(corpus, os.O_RDONLY)
        self._documents: Documents | None = None

    @classmethod
    def load(cls, corpus: str | os.PathLike[str], index_dir: str | os.PathLike[str] | None = None, *,
             rebuild: bool = False) -> BM25Retriever:
        """Open the index of `corpus` (default dir `<corpus>.bm25s`), building it if missing or stale."""
        corpus = Path(corpus)
        if not corpus.is_file():
            raise CorpusError(f"corpus file not found: {corpus}")
        index = Path(index_dir) if index_dir is not None else corpus.with_name(corpus.name + ".bm25s")
        if not rebuild and reusable(index, corpus):
            try:
                retriever = cls(corpus, index, built=False)
            except (OSError, ValueError, KeyError, EOFError) as e:
                logger.warning("cannot open the BM25 index %s (%s); rebuilding it", index, e)
            else:
                logger.info("reusing the BM25 index %s (%d passages)", index, len(retriever))
                return retriever
        build_index(corpus, index)
        return cls(corpus, index, built=True)

    def __len__(self) -> int:
        return len(self._spans)

    @property
    def corpus_hash(self) -> str:
        """The content hash of the corpus file (what a run's fingerprint names it by)."""
        return str(self.manifest["full_hash"])

    def identity(self) -> dict[str, Any] | None:
        """None: a run over BM25 is named by its corpus alone (as before dense retrieval existed)."""
        return None

    def documents(self) -> Documents:
        """The corpus's documents by id or title (the open tool's), their tables cached beside the index."""
        if self._documents is None:
            self._documents = Documents.load(self.corpus, self._spans, self.corpus_hash, self.index_dir / "documents")
        return self._documents

    def search_batch(self, queries: list[str], topk: int) -> list[list[Document]]:
        """Top `topk` passages per query, best first, with scores; no matching term -> `[]`."""
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ConfigError(f"topk must be an integer >= 1, got {topk!r}")
        vocab = self._model.vocab_dict
        return [self._search_one(self._analyzer.term_ids(q, vocab), topk) for q in queries]

    def _search_one(self, term_ids: list[int], topk: int) -> list[Document]:
        if not term_ids:
            return []
        scores = self._model.get_scores_from_ids(term_ids)
        return [self._read(i, s) for i, s in top_k(scores, topk)]

    async def search(self, queries: Sequence[str], topk: int) -> list[list[Document]]:
        """`search_batch` in a worker thread, so the event loop keeps serving while BM25 runs."""
        return await asyncio.to_thread(self.search_batch, list(queries), topk)

    def __enter__(self) -> BM25Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the corpus file; searching afterwards raises RetrievalError."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._documents is not None:
            self._documents.close()

    async def aclose(self) -> None:
        """No-op: nothing here is bound to an event loop, and one retriever may serve several loops."""

    def __reduce__(self) -> tuple[Any, tuple[str, str, str]]:
        # Pickle (for `Dataset.map` workers and fingerprints) as "reopen this index", not as its arrays;
        # the corpus hash makes a changed corpus pickle differently.
        return _reopen, (str(self.corpus), str(self.index_dir), str(self.manifest.get("full_hash")))

    def _read(self, i: int, score: float) -> Document:
        start, end = (int(x) for x in self._spans[i])
        if self._fd is None:
            raise RetrievalError("the BM25 retriever is closed")
        try:
            raw = os.pread(self._fd, end - start, start)
        except OSError as e:
            raise RetrievalError(f"cannot read passage {i} from {self.corpus}: {e}") from None
        doc = parse_passage(raw, f"{self.corpus} bytes {start}-{end}")
        return Document(id=doc.id, title=doc.title, text=doc.text, contents=doc.contents, score=score)


def _reopen(corpus: str, index_dir: str, full_hash: str) -> BM25Retriever:
    del full_hash  # only there to make the pickle differ when the corpus does
    return BM25Retriever.load(corpus, index_dir)
