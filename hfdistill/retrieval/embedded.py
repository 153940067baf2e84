"""Opening the retriever a run or a server searches in-process: BM25, dense or hybrid over a corpus."""

from __future__ import annotations

from pathlib import Path

from hfdistill.core.encoders import RETRIEVER_KINDS, DenseOptions
from hfdistill.core.errors import ConfigError
from hfdistill.retrieval.protocol import EmbeddedRetriever

__all__ = ["open_embedded"]


def open_embedded(corpus: str | Path, kind: str = "bm25", *, index_dir: str | None = None,
                  dense: DenseOptions | None = None) -> EmbeddedRetriever:
    """Load (or build, for BM25) the `kind` retriever of `corpus`; every check runs here, before any search."""
    if kind not in RETRIEVER_KINDS:
        raise ConfigError(f"--retriever must be one of {', '.join(RETRIEVER_KINDS)}, got {kind!r}")
    if kind == "bm25":
        from hfdistill.retrieval.bm25 import BM25Retriever

        return BM25Retriever.load(corpus, index_dir)
    if dense is None:
        raise ConfigError(f"--retriever {kind} needs --index: a directory built by `hfdistill index`, or a faiss file "
                          "with --encoder")
    from hfdistill.retrieval.extras import require_dense

    require_dense(f"--retriever {kind}")
    from hfdistill.retrieval.dense import DenseRetriever

    retriever = DenseRetriever.load(corpus, dense)
    if kind == "dense":
        return retriever
    from hfdistill.retrieval.bm25 import BM25Retriever
    from hfdistill.retrieval.hybrid import HybridRetriever

    try:
        return HybridRetriever(BM25Retriever.load(corpus, index_dir), retriever)
    except BaseException:
        retriever.close()
        raise
