"""The dense retriever: an encoder, an index's vectors and the corpus rows they number, behind the
same `search` as BM25, with concurrent searches batched (see `batcher`).

It opens a directory built by `hfdistill index` (its manifest says which encoder and conventions
made the vectors) or a bare faiss file such as Search-R1's `e5_Flat.index` with `--encoder` naming the
model (the family's conventions are then assumed, and logged). Everything that can be wrong is checked
before the first search, cheapest first: the index is readable, the encoder makes vectors of the
index's width, the corpus is the one the manifest names and has one row per vector.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hfdistill.core.encoders import DenseOptions, EncoderSpec, conventions
from hfdistill.core.errors import ConfigError
from hfdistill.core.types import Document
from hfdistill.retrieval.batcher import Batcher
from hfdistill.retrieval.corpus_rows import CorpusRows
from hfdistill.retrieval.dense_index import MANIFEST
from hfdistill.retrieval.documents import Documents
from hfdistill.retrieval.encoder import Encoder, encoder_dim, resolve_device
from hfdistill.retrieval.extras import require_faiss
from hfdistill.retrieval.faiss_file import FaissHeader, read_header
from hfdistill.retrieval.fingerprint import CorpusFingerprint, same_corpus
from hfdistill.retrieval.knn import FaissSearcher, Searcher, TorchSearcher

__all__ = ["DenseRetriever", "IndexTarget"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexTarget:
    """An index on disk: its faiss file, and the manifest when `hfdistill index` built it."""

    header: FaissHeader
    manifest: dict[str, Any] | None
    spec: EncoderSpec

    @classmethod
    def resolve(cls, options: DenseOptions) -> IndexTarget:
        path = Path(options.index)
        if path.is_dir():
            manifest = _read_manifest(path)
            header = read_header(path / str(manifest.get("index_file", "")))
            return cls(header, manifest, _manifest_spec(manifest, options))
        header = read_header(path)  # a missing path fails here, naming it
        if options.encoder is None:
            raise ConfigError(f"--index {path} is a bare faiss file without a manifest: pass --encoder naming the "
                              "model that encoded it (for Search-R1's e5_Flat.index: --encoder intfloat/e5-base-v2)")
        spec = conventions(options.encoder, options.overrides)
        log.info("no manifest beside %s: assuming it was encoded by %s", path, spec.describe())
        return cls(header, None, spec)

    def identity(self) -> dict[str, Any]:
        """What names these vectors in a run's fingerprint: the build's vector hash, or the bare file's
        size and sampled hash; and the encoder's conventions (by model name, not local path)."""
        if self.manifest is not None:
            vectors = str(self.manifest.get("vectors_hash"))
        else:
            vectors = f"{self.header.size}:{CorpusFingerprint.of(self.header.path).sample_hash}"
        encoder = {**self.spec.to_dict(), "name": Path(self.spec.name).name or self.spec.name}
        return {"vectors": vectors, "encoder": encoder}


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--index {path} has no {MANIFEST}: it is not a finished `hfdistill index` build (rerun "
                          "that command to resume it), or pass the .index file inside with --encoder") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--index {path}: {MANIFEST} cannot be read ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("encoder"), dict):
        raise ConfigError(f"--index {path}: {MANIFEST} is not an hfdistill dense index manifest")
    return manifest


def _manifest_spec(manifest: dict[str, Any], options: DenseOptions) -> EncoderSpec:
    spec = EncoderSpec.from_dict(manifest["encoder"])
    conflicts = [f"--{k.replace('_', '-')} {v!r} (built with {getattr(spec, k)!r})"
                 for k, v in options.overrides.given().items() if getattr(spec, k) != v]
    if conflicts:
        raise ConfigError(f"--index {options.index} was built with other encoder settings: {', '.join(conflicts)}; "
                          "drop them (the manifest's are used) or rebuild the index")
    if options.encoder is not None and options.encoder != spec.name:
        log.info("encoding queries with %s (the index was built with %s)", options.encoder, spec.name)
        spec = EncoderSpec.from_dict({**spec.to_dict(), "name": options.encoder})
    return spec


class DenseRetriever:
    """Dense search over a corpus; `search`/`aclose` make it a Retriever for the rollout loop."""

    def __init__(self, target: IndexTarget, rows: CorpusRows, encoder: Encoder, searcher: Searcher,
                 options: DenseOptions) -> None:
        self.target, self.rows, self.encoder, self.searcher = target, rows, encoder, searcher
        self.options = options
        self._documents: Documents | None = None
        self.batcher: Batcher[list[Document]] = Batcher(
            self.search_now, max_wait_s=options.batch_wait_ms / 1000, max_queries=options.max_batch,
            merge=options.batching, name="hfdistill-dense")

    @classmethod
    def load(cls, corpus: str | Path, options: DenseOptions) -> DenseRetriever:
        """Check everything (see the module docstring), load the vectors and the encoder, warm up."""
        corpus = Path(corpus)
        target = IndexTarget.resolve(options)
        dim = encoder_dim(target.spec.name)
        if dim != target.header.dim:
            raise ConfigError(f"the encoder {target.spec.name} makes {dim}-dimensional vectors but the index "
                              f"{target.header.path} holds {target.header.dim}-dimensional ones: pass the encoder "
                              "that built it (--encoder)")
        rows = _corpus_rows(corpus, target)
        try:
            if len(rows) != target.header.ntotal:
                raise ConfigError(f"--corpus {corpus} has {len(rows):,} passages but the index {target.header.path} "
                                  f"holds {target.header.ntotal:,} vectors: pass the corpus it was built from")
            device = resolve_device(options.device)
            searcher = _searcher(target.header, device)
            encoder = Encoder.load(target.spec, options.device)
        except BaseException:
            rows.close()
            raise
        retriever = cls(target, rows, encoder, searcher, options)
        retriever.search_now(["warm up"], 1)  # first calls allocate and pick kernels: not on a rollout's time
        log.info("dense retriever ready: %s passages, %s, search on %s", f"{len(rows):,}", target.spec.describe(),
                 type(searcher).__name__.removesuffix("Searcher").lower() + f" ({device.type})")
        return retriever

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def corpus_hash(self) -> str:
        return self.rows.full_hash

    def identity(self) -> dict[str, Any]:
        return {"kind": "dense", **self.target.identity()}

    def documents(self) -> Documents:
        """The corpus's documents by id or title (the open tool's), cached where its passage numbering is."""
        if self._documents is None:
            corpus = self.rows.corpus
            where = self.target.header.path.parent if self.target.manifest is not None else \
                corpus.with_name(corpus.name + ".rows")
            self._documents = Documents.load(corpus, self.rows.spans, self.rows.full_hash, where / "documents")
        return self._documents

    def search_now(self, queries: list[str], k: int) -> list[list[Document]]:
        """Encode and search on the calling thread (the batcher's worker, or a warm-up). A query asked twice
        in one batch (rollouts of one question often start alike) is encoded and searched once."""
        unique = list(dict.fromkeys(queries))
        vectors = self.encoder.encode_queries(unique)
        scores, rows = self.searcher.search(vectors, k)
        found = {q: [self.rows.document(int(r), float(s)) for r, s in zip(rs, ss, strict=True) if r >= 0]
                 for q, rs, ss in zip(unique, rows.tolist(), scores.tolist(), strict=True)}
        return [list(found[q]) for q in queries]

    async def search(self, queries: Sequence[str], topk: int) -> list[list[Document]]:
        """Top `topk` passages per query, best first, with scores; batched with concurrent searches."""
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ConfigError(f"topk must be an integer >= 1, got {topk!r}")
        return await self.batcher.search(queries, topk)

    async def aclose(self) -> None:
        """No-op: nothing here belongs to an event loop (`close` ends the worker)."""

    def close(self) -> None:
        self.batcher.close()
        self.rows.close()
        if self._documents is not None:
            self._documents.close()

    def __enter__(self) -> DenseRetriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _corpus_rows(corpus: Path, target: IndexTarget) -> CorpusRows:
    if not corpus.is_file():
        raise ConfigError(f"--corpus {corpus} is not a file; pass the JSONL corpus the index was built from")
    if target.manifest is None:
        return CorpusRows.load(corpus, corpus.with_name(corpus.name + ".rows"))
    built_from = target.manifest.get("corpus") or {}
    if not same_corpus(built_from, corpus)[0]:
        raise ConfigError(f"--corpus {corpus} is not the corpus the index {target.header.path.parent} was built from "
                          f"({built_from.get('path')}, {built_from.get('rows')} passages, content hash "
                          f"{str(built_from.get('full_hash'))[:12]}): pass that corpus, or rebuild the index from "
                          "this one with `hfdistill index`")
    return CorpusRows.load(corpus, target.header.path.parent)


def _searcher(header: FaissHeader, device: torch.device) -> Searcher:
    """A GPU holds a flat index's vectors in half precision; anything else is faiss's, on CPU."""
    if header.is_flat_ip:
        header.check_flat()  # a truncated download or copy fails here, not at some later search
    if device.type == "cuda" and header.is_flat_ip:
        return TorchSearcher.from_file(header, device, torch.float16)
    require_faiss(f"searching the {header.kind} index {header.path} on CPU")
    return FaissSearcher(header)
