"""The Search-R1 retrieval API as values: the `Retriever` protocol the rollout loop needs, and the
parsing of a `/retrieve` answer into documents (pure, shared by the HTTP client and the tests).

The embedded BM25 retriever (`retrieval.bm25`) implements the same protocol, so the rollout loop
and the observation templates see identical documents whichever is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from hfdistill.core.types import Document

if TYPE_CHECKING:
    from hfdistill.retrieval.documents import Documents

__all__ = ["EmbeddedRetriever", "Retriever", "document_from_json", "parse_search_response"]


class Retriever(Protocol):
    """What the rollout loop needs: one list of documents per query, in order."""

    async def search(self, queries: Sequence[str], topk: int) -> list[list[Document]]: ...

    async def aclose(self) -> None: ...


class EmbeddedRetriever(Retriever, Protocol):
    """A retriever over a local corpus (BM25, dense, hybrid): also what names it in a run's fingerprint."""

    corpus_hash: str  # the corpus file's content hash

    def __len__(self) -> int: ...

    def identity(self) -> dict[str, Any] | None: ...  # None: the corpus hash alone names it

    def documents(self) -> Documents: ...  # the corpus's documents by id or title (the open tool's)

    def close(self) -> None: ...


def document_from_json(doc: dict[str, Any], score: float | None = None) -> Document:
    """A Search-R1 document (`{"id", "contents"}` or `{"title", "text"[, "contents"]}`) as a Document."""
    contents = doc.get("contents")
    if not isinstance(contents, str) or not contents:
        title, text = str(doc.get("title") or ""), str(doc.get("text") or "")
        contents = f'"{title}"\n{text}' if title else text
    first, _, rest = contents.partition("\n")
    title = doc.get("title") if isinstance(doc.get("title"), str) else first.strip().strip('"')
    text = doc.get("text") if isinstance(doc.get("text"), str) else rest.strip()
    return Document(id=str(doc.get("id", "")), title=title, text=text, contents=contents,
                    score=float(score) if isinstance(score, (int, float)) else None)


def parse_search_response(payload: Any, n_queries: int) -> list[list[Document]]:
    """`{"result": [[{"document": {...}, "score": s} | {...doc...}, ...], ...]}` -> documents per query."""
    result = payload.get("result") if isinstance(payload, dict) else None
    if not isinstance(result, list) or len(result) != n_queries:
        raise ValueError(f"expected {{\"result\": [...]}} with {n_queries} lists, got {str(payload)[:200]}")
    out = []
    for hits in result:
        docs = []
        for hit in hits or ():
            if isinstance(hit, dict) and isinstance(hit.get("document"), dict):
                docs.append(document_from_json(hit["document"], hit.get("score")))
            elif isinstance(hit, dict):
                docs.append(document_from_json(hit))
            else:
                raise ValueError(f"a search hit is not an object: {str(hit)[:100]}")
        out.append(docs)
    return out
