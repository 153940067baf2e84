"""Building a dense index: a corpus encoded shard by shard into a faiss index Search-R1's server loads,
plus `manifest.json` (the encoder and its conventions, the dimension, the corpus's fingerprint).

The corpus is read a shard of passages at a time (memory stays flat), each shard's vectors are saved
atomically under `DIR/.build/`, and a build that is killed resumes from its last finished shard, to
the same index: shard boundaries and batches depend only on the corpus and the settings. A flat index
is written by streaming the shards into one file; an approximate one (HNSW, IVF-PQ) is built by faiss
from the shards, one at a time. The manifest is written last: a directory without one is no index.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hfdistill import __version__
from hfdistill.core.atomic import atomic_path, atomic_write_text
from hfdistill.core.encoders import EncoderSpec
from hfdistill.core.errors import ConfigError
from hfdistill.retrieval.corpus_rows import CorpusRows
from hfdistill.retrieval.encoder import Encoder, encoder_dim
from hfdistill.retrieval.extras import require_faiss
from hfdistill.retrieval.faiss_file import FlatWriter
from hfdistill.retrieval.fingerprint import CorpusFingerprint, content_hasher

__all__ = ["MANIFEST", "BuildOptions", "build_dense_index", "index_file_name"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
INDEX_FORMAT = 1
_INDEX_TYPES = re.compile(r"Flat|HNSW\d+(,Flat)?|IVF\d+,(Flat|PQ\d+(x\d+)?)|OPQ\d+(_\d+)?,IVF\d+,PQ\d+(x\d+)?")
_TRAIN_PER_LIST = 64  # training vectors per IVF list (faiss warns below 39)


@dataclass(frozen=True)
class BuildOptions:
    """How to build: the faiss index type, the device, passages per batch and per resumable shard."""

    index_type: str = "Flat"
    device: str = "auto"
    batch_size: int | None = None  # None: 512 on a GPU (Search-R1's), 32 on CPU
    shard_rows: int = 8192

    def __post_init__(self) -> None:
        if not _INDEX_TYPES.fullmatch(self.index_type):
            raise ConfigError(f"--index-type {self.index_type!r} is not one this builds: Flat (exact, the default), "
                              "HNSW<M> (e.g. HNSW64) or IVF<lists>,PQ<bytes> (e.g. IVF4096,PQ64)")
        if self.shard_rows < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise ConfigError("--shard-rows and --batch-size must be >= 1")


def index_file_name(spec: EncoderSpec, index_type: str) -> str:
    """Search-R1's naming: `<method>_<type>.index` (`e5_Flat.index`)."""
    method = spec.family if spec.family != "other" else "dense"
    return f"{method}_{re.sub(r'[^A-Za-z0-9]+', '_', index_type)}.index"


def build_dense_index(corpus: Path, out: Path, spec: EncoderSpec, options: BuildOptions) -> dict[str, Any]:
    """Encode `corpus` into the index directory `out` (resuming a killed build); returns the manifest."""
    t0 = time.monotonic()
    dim = encoder_dim(spec.name)  # a wrong model name fails before the corpus is read
    if options.index_type != "Flat":
        require_faiss(f"--index-type {options.index_type}")
    _check_out(out)
    rows = CorpusRows.load(corpus, out)
    encoder: Encoder | None = None
    try:
        fingerprint = CorpusFingerprint.of(corpus)
        encoder = Encoder.load(spec, options.device)
        if encoder.dim != dim:
            raise ConfigError(f"the encoder {spec.name} makes {encoder.dim}-dimensional vectors, its config says {dim}")
        batch = options.batch_size or (512 if encoder.device.type == "cuda" else 32)
        shards = _Shards(out / ".build", _settings(spec, options, encoder, rows, batch))
        vectors_hash = _encode_all(rows, encoder, shards, batch)
        index_file = _assemble(out, shards, len(rows), dim, spec, options)
        manifest = _manifest(spec, options, encoder, rows, fingerprint, index_file, vectors_hash,
                             time.monotonic() - t0)
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))  # last: marks the index complete
    finally:
        rows.close()
        if encoder is not None:
            encoder.close()  # its tokenizer's worker processes
    shutil.rmtree(out / ".build", ignore_errors=True)
    log.info("indexed %d passages of %s in %.0fs -> %s", len(rows), corpus.name, time.monotonic() - t0,
             out / manifest["index_file"])
    return manifest


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the index directory {out}: {e.strerror}; pass another --out") from None
    (out / MANIFEST).unlink(missing_ok=True)  # no longer a complete index while it is rebuilt


def _settings(spec: EncoderSpec, options: BuildOptions, encoder: Encoder, rows: CorpusRows,
              batch: int) -> dict[str, Any]:
    """What the shards depend on: a build resumes only shards made with exactly these."""
    return {"format": INDEX_FORMAT, "encoder": spec.to_dict(), "dtype": str(encoder.dtype).removeprefix("torch."),
            "shard_rows": options.shard_rows, "batch_size": batch, "corpus": rows.full_hash,
            "rows": len(rows)}


class _Shards:
    """The vectors of each finished shard, `shard-000042.npy`, under the build directory."""

    def __init__(self, root: Path, settings: dict[str, Any]) -> None:
        self.root, self.rows_per = root, settings["shard_rows"]
        state = root / "settings.json"
        try:
            previous = json.loads(state.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != settings:
            if previous is not None:
                log.warning("the unfinished build in %s used other settings or another corpus; starting over", root)
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            atomic_write_text(state, json.dumps(settings, indent=1))

    def path(self, i: int) -> Path:
        return self.root / f"shard-{i:06d}.npy"

    def finished(self) -> int:
        """Shards 0..n-1 are finished (a later one without its predecessor does not count)."""
        n = 0
        while self.path(n).is_file():
            n += 1
        return n

    def save(self, i: int, vectors: np.ndarray) -> None:
        with atomic_path(self.path(i)) as tmp, tmp.open("wb") as f:
            np.save(f, vectors)

    def load(self, i: int) -> np.ndarray:
        return np.load(self.path(i))

    def all(self, total: int) -> Iterator[np.ndarray]:
        for i in range(-(-total // self.rows_per)):
            yield self.load(i)


def _encode_all(rows: CorpusRows, encoder: Encoder, shards: _Shards, batch: int) -> str:
    """Encode every shard not finished yet; returns the hash of all vectors, in row order."""
    total, per = len(rows), shards.rows_per
    done = min(shards.finished(), -(-total // per))
    if done:
        log.info("resuming the build: %d of %d shards are finished", done, -(-total // per))
    digest = content_hasher()
    for i in range(done):
        digest.update(shards.load(i).tobytes())
    interactive = sys.stderr.isatty()
    with tqdm(total=total, initial=min(done * per, total), unit=" passages", desc="encoding", dynamic_ncols=True,
              mininterval=0.5 if interactive else 30, smoothing=0.1) as bar:
        for i in range(done, -(-total // per)):
            first, last = i * per, min(total, (i + 1) * per)
            vectors = encoder.encode_passages(rows.contents(first, last), batch, progress=bar.update)
            shards.save(i, vectors)
            digest.update(vectors.tobytes())
    return digest.hexdigest()


def _assemble(out: Path, shards: _Shards, total: int, dim: int, spec: EncoderSpec, options: BuildOptions) -> str:
    name = index_file_name(spec, options.index_type)
    with atomic_path(out / name) as tmp:
        if options.index_type == "Flat":
            FlatWriter(tmp, dim, total).write(shards.all(total))
        else:
            _faiss_index(tmp, shards, total, dim, options.index_type)
    return name


def _faiss_index(path: Path, shards: _Shards, total: int, dim: int, index_type: str) -> None:
    import faiss

    index = faiss.index_factory(dim, index_type, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(_training_sample(shards, total, index))
    with tqdm(total=total, unit=" vectors", desc=f"building {index_type}", dynamic_ncols=True) as bar:
        for vectors in shards.all(total):
            index.add(np.ascontiguousarray(vectors, dtype=np.float32))
            bar.update(len(vectors))
    faiss.write_index(index, str(path))


def _training_sample(shards: _Shards, total: int, index: Any) -> np.ndarray:
    """Evenly spaced rows, as many as the IVF lists need (all rows when the corpus is small)."""
    import faiss

    lists = faiss.extract_index_ivf(index).nlist
    want = min(total, _TRAIN_PER_LIST * lists)
    picked = set(np.linspace(0, total - 1, want).astype(np.int64).tolist())
    sample = [v[[r - i * shards.rows_per for r in range(i * shards.rows_per, i * shards.rows_per + len(v))
                 if r in picked]] for i, v in enumerate(shards.all(total))]
    data = np.concatenate(sample).astype(np.float32)
    if len(data) < lists:
        raise ConfigError(f"--index-type with {lists} IVF lists needs at least {lists} passages; the corpus has "
                          f"{total}: use fewer lists or Flat")
    return data


def _manifest(spec: EncoderSpec, options: BuildOptions, encoder: Encoder, rows: CorpusRows,
              fingerprint: CorpusFingerprint, index_file: str, vectors_hash: str, seconds: float) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "format": INDEX_FORMAT, "index_file": index_file, "index_type": options.index_type,
        "dim": encoder.dim, "count": len(rows), "metric": "inner_product",
        "encoder": spec.to_dict(), "encoded_in": str(encoder.dtype).removeprefix("torch."),
        "corpus": {"path": str(rows.corpus.resolve()), **fingerprint.fields(), "full_hash": rows.full_hash,
                   "rows": len(rows)},
        "vectors_hash": vectors_hash,
        "built_with": {"hfdistill": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "build_seconds": round(seconds, 1), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
