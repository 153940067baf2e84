"""faiss index files read and written without faiss: the header every index starts with, and the
vectors of a flat inner-product index (Search-R1's `e5_Flat.index`), streamed in chunks.

Streaming is what keeps memory plannable at wiki scale: a 21M x 768 flat index is 60 GiB of float32;
reading it chunk by chunk into half precision on a GPU needs the GPU's 30 GiB and a chunk of RAM,
never the whole file in memory, and writing one from encoded shards needs one shard at a time.

Layout (faiss `write_index`, every index): fourcc (4 bytes), d (int32), ntotal (int64), two int64
placeholders, is_trained (uint8), metric_type (int32; 0 inner product, 1 L2), then the index's own
data. A flat index ("IxFI" for inner product, "IxF2" for L2) follows with the vector count as an
uint64 and the float32 vectors, row after row.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hfdistill.core.errors import ConfigError

__all__ = ["FLAT_IP", "FaissHeader", "FlatWriter", "flat_chunks", "read_header"]

FLAT_IP = b"IxFI"
FLAT_L2 = b"IxF2"
METRIC_INNER_PRODUCT = 0
_HEADER = struct.Struct("<4siqqqBi")  # fourcc, d, ntotal, dummy, dummy, is_trained, metric_type
_COUNT = struct.Struct("<Q")
_PLACEHOLDER = 1 << 20  # what faiss writes in the two unused header fields (a signature, in effect)
# Index types by fourcc, for messages (faiss/impl/index_write.cpp).
KINDS = {b"IxFI": "Flat (inner product)", b"IxF2": "Flat (L2)", b"IHNf": "HNSW", b"IwPQ": "IVF-PQ",
         b"IwFl": "IVF-Flat", b"IxSQ": "scalar quantizer", b"IxPq": "PQ"}


@dataclass(frozen=True)
class FaissHeader:
    """What the first bytes of a faiss index say, and where a flat index's vectors start."""

    path: Path
    fourcc: bytes
    dim: int
    ntotal: int
    metric: int
    size: int  # bytes in the file

    @property
    def kind(self) -> str:
        return KINDS.get(self.fourcc, self.fourcc.decode("latin-1"))

    @property
    def is_flat_ip(self) -> bool:
        return self.fourcc == FLAT_IP

    @property
    def vectors_offset(self) -> int:
        return _HEADER.size + _COUNT.size

    def check_flat(self) -> None:
        """The file holds exactly `ntotal` x `dim` float32 vectors after the header (a join or copy that
        lost or added bytes fails here)."""
        want = self.vectors_offset + 4 * self.ntotal * self.dim
        if not self.is_flat_ip:
            raise ConfigError(f"{self.path} is a {self.kind} faiss index; this reader takes flat inner-product "
                              "indexes only")
        if self.size != want:
            raise ConfigError(f"{self.path} holds {self.size:,} bytes but a flat index of {self.ntotal:,} x "
                              f"{self.dim} vectors needs {want:,}: the file is truncated or damaged; download or "
                              "build it again")
        with self.path.open("rb") as f:
            f.seek(_HEADER.size)
            (count,) = _COUNT.unpack(f.read(_COUNT.size))
        if count != self.ntotal * self.dim:
            raise ConfigError(f"{self.path}: the vector block holds {count:,} floats, the header promises "
                              f"{self.ntotal * self.dim:,}; the file is damaged")


def read_header(path: str | os.PathLike[str]) -> FaissHeader:
    """The header of a faiss index file, or a ConfigError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(_HEADER.size)
        size = path.stat().st_size
    except FileNotFoundError:
        raise ConfigError(f"--index {path}: no such file or directory; pass a directory made by `hfdistill index` "
                          "or a faiss index file such as Search-R1's e5_Flat.index") from None
    except OSError as e:
        raise ConfigError(f"--index {path} cannot be read: {e.strerror or e}") from None
    if len(raw) < _HEADER.size:
        raise ConfigError(f"--index {path} is not a faiss index: it is only {size} bytes long")
    fourcc, dim, ntotal, dummy1, dummy2, trained, metric = _HEADER.unpack(raw)
    if not fourcc.isalnum() or dim < 1 or ntotal < 0 or (dummy1, dummy2) != (_PLACEHOLDER,) * 2 or trained > 1:
        raise ConfigError(f"--index {path} is not a faiss index (it starts with {raw[:8]!r})")
    if metric != METRIC_INNER_PRODUCT:
        raise ConfigError(f"--index {path} ranks by L2 distance (metric {metric}); dense retrieval here, as in "
                          "Search-R1, ranks by inner product: rebuild it with `hfdistill index`")
    return FaissHeader(path, fourcc, dim, ntotal, metric, size)


def flat_chunks(header: FaissHeader, rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 array of up to `rows` x dim) over a flat index, read from disk in order.

    Each chunk is a fresh aligned array, and the OS is told the file's pages just read will not be
    needed again: resident memory is one chunk, and the page cache is not filled with the index.
    """
    header.check_flat()
    row_bytes = 4 * header.dim
    with header.path.open("rb", buffering=0) as f:
        _advise(f.fileno(), 0, 0, "POSIX_FADV_SEQUENTIAL")
        f.seek(header.vectors_offset)
        for start in range(0, header.ntotal, rows):
            n = min(rows, header.ntotal - start)
            buf = np.empty((n, header.dim), dtype=np.float32)
            view = memoryview(buf).cast("B")
            got = 0
            while got < n * row_bytes:
                read = f.readinto(view[got:])
                if not read:
                    raise ConfigError(f"{header.path} ended early, at row {start + got // row_bytes:,}")
                got += read
            _advise(f.fileno(), header.vectors_offset + start * row_bytes, n * row_bytes, "POSIX_FADV_DONTNEED")
            yield start, buf


def _advise(fd: int, offset: int, length: int, advice: str) -> None:
    """A hint to the page cache where the OS takes one (Linux); elsewhere nothing."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, getattr(os, advice))


class FlatWriter:
    """Writes a flat inner-product index from blocks of vectors, streaming: faiss reads the result."""

    def __init__(self, path: Path, dim: int, ntotal: int) -> None:
        self.path, self.dim, self.ntotal = path, dim, ntotal
        self._written = 0

    def write(self, blocks: Iterable[np.ndarray]) -> None:
        with self.path.open("wb") as f:
            f.write(_HEADER.pack(FLAT_IP, self.dim, self.ntotal, _PLACEHOLDER, _PLACEHOLDER, 1,
                                 METRIC_INNER_PRODUCT))
            f.write(_COUNT.pack(self.ntotal * self.dim))
            for block in blocks:
                block = np.ascontiguousarray(block, dtype="<f4")
                if block.ndim != 2 or block.shape[1] != self.dim:
                    raise ValueError(f"expected blocks of shape (n, {self.dim}), got {block.shape}")
                f.write(block.tobytes())
                self._written += len(block)
            f.flush()
            os.fsync(f.fileno())
        if self._written != self.ntotal:
            raise ValueError(f"wrote {self._written} vectors, promised {self.ntotal}")
