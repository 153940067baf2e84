"""Hybrid retrieval: BM25 and dense over the same corpus, fused by reciprocal rank fusion (RRF).

Each retriever ranks its own `depth` best passages; a passage scores the sum of 1 / (k + rank) over
the lists it appears in (Cormack et al., 2009, with their k = 60), so a passage that either retriever
ranks high is kept even when the other never found it, and one both rank high comes first.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

from hfdistill.core.types import Document
from hfdistill.retrieval.bm25 import BM25Retriever
from hfdistill.retrieval.dense import DenseRetriever
from hfdistill.retrieval.documents import Documents

__all__ = ["RRF_K", "HybridRetriever", "fuse"]

RRF_K = 60
MIN_DEPTH = 10  # each list fused is at least this deep, so a top-k answer is not only both lists' heads


def fuse(lists: Sequence[list[Document]], topk: int, k: int = RRF_K) -> list[Document]:
    """The `topk` best documents of several rankings by RRF score (a document is its id and contents)."""
    scores: dict[tuple[str, str], float] = {}
    docs: dict[tuple[str, str], Document] = {}
    for ranking in lists:
        for rank, doc in enumerate(ranking, start=1):
            key = (doc.id, doc.contents)
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
            docs.setdefault(key, doc)
    best = sorted(scores, key=lambda key: -scores[key])[:topk]  # stable: ties keep first-seen order
    return [dataclasses.replace(docs[key], score=scores[key]) for key in best]


class HybridRetriever:
    """BM25 and dense searched at once for every query, then fused."""

    def __init__(self, bm25: BM25Retriever, dense: DenseRetriever) -> None:
        if bm25.corpus_hash != dense.corpus_hash:
            raise ValueError("hybrid retrieval needs both retrievers over the same corpus")
        self.bm25, self.dense = bm25, dense

    def __len__(self) -> int:
        return len(self.dense)

    @property
    def corpus_hash(self) -> str:
        return self.dense.corpus_hash

    def identity(self) -> dict[str, Any]:
        return {"kind": "hybrid", "fusion": f"rrf-{RRF_K}", "depth": MIN_DEPTH, "dense": self.dense.identity()}

    def documents(self) -> Documents:
        return self.dense.documents()

    async def search(self, queries: Sequence[str], topk: int) -> list[list[Document]]:
        depth = max(topk, MIN_DEPTH)
        sparse, dense = await asyncio.gather(self.bm25.search(queries, depth), self.dense.search(queries, depth))
        return [fuse((s, d), topk) for s, d in zip(sparse, dense, strict=True)]

    async def aclose(self) -> None:
        """No-op, as for its two parts."""

    def close(self) -> None:
        self.bm25.close()
        self.dense.close()
