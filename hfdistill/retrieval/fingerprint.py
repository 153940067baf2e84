"""A corpus file's fingerprint, shared by every index built from one (BM25, dense): a cheap identity
(size, mtime, a sampled hash) checked first, and the content hash of the whole file as the tie-break.

A copied or touched corpus keeps its content hash, so its indexes stay valid; an edited one does not.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CorpusFingerprint", "content_hasher", "full_hash", "same_corpus"]

_HASH_CHUNK = 1 << 20


def content_hasher() -> Any:
    """The hash `full_hash` computes, for callers that read the file anyway and feed it as they go."""
    return hashlib.blake2b(digest_size=16)


@dataclass(frozen=True, slots=True)
class CorpusFingerprint:
    """What identifies a corpus file cheaply: stat plus a sampled hash; the full hash is the tie-break."""

    size: int
    mtime_ns: int
    sample_hash: str

    @classmethod
    def of(cls, path: Path) -> CorpusFingerprint:
        st = path.stat()
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, sample_hash=_sample_hash(path, st.st_size))

    def fields(self) -> dict[str, Any]:
        """The manifest fields this fingerprint is stored as."""
        return {"size": self.size, "mtime_ns": self.mtime_ns, "sample_hash": self.sample_hash}


def _sample_hash(path: Path, size: int, blocks: int = 16, block: int = 1 << 16) -> str:
    """Hash of `blocks` evenly spaced 64 KiB blocks (first and last included): ~1 MiB read."""
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        for i in range(blocks):
            f.seek(max(0, (size - block) * i // (blocks - 1)))
            h.update(f.read(block))
    return h.hexdigest()


def full_hash(path: Path) -> str:
    h = content_hasher()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def same_corpus(stored: dict[str, Any], path: Path) -> tuple[bool, CorpusFingerprint]:
    """Whether `path` is the corpus whose fingerprint fields (`size`, `mtime_ns`, `sample_hash`, `full_hash`)
    were stored, and its fingerprint now (to refresh the stored stat fields when only they changed)."""
    fp = CorpusFingerprint.of(path)
    if fp.size != stored.get("size"):
        return False, fp
    if fp.mtime_ns == stored.get("mtime_ns") and fp.sample_hash == stored.get("sample_hash"):
        return True, fp
    # Same size, new mtime (a copy, a touch): only the full hash tells an edit from a no-op.
    return full_hash(path) == stored.get("full_hash"), fp
