"""Nearest-neighbour search over an index's vectors by inner product: faiss on CPU (the index file
memory-mapped, so the OS pages it in as needed rather than the process copying it), or a matrix product
plus a cheap k-selection in torch on a GPU, with the vectors streamed from the file into half precision.

Both answer `search(queries, k) -> (scores, rows)`: float32 and int64 arrays of shape (queries, k),
best first; a row of -1 (score -inf) pads an index smaller than k.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from hfdistill.core.errors import ConfigError, first_line
from hfdistill.retrieval.faiss_file import FaissHeader, flat_chunks
from hfdistill.retrieval.topk import select

__all__ = ["FaissSearcher", "Searcher", "TorchSearcher"]

log = logging.getLogger(__name__)

LOAD_ROWS = 1 << 18  # rows read from disk at a time when streaming to the GPU (768 MiB of fp32 at d=768)


class Searcher(Protocol):
    ntotal: int
    dim: int

    def search(self, queries: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class FaissSearcher:
    """Any faiss index (Flat, HNSW, IVF-PQ) on CPU; a flat index's vectors stay memory-mapped."""

    def __init__(self, header: FaissHeader) -> None:
        import faiss

        try:
            self.index = faiss.read_index(str(header.path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError as e:
            raise ConfigError(f"--index {header.path} cannot be read by faiss: {first_line(e)}") from None
        self.ntotal, self.dim = int(self.index.ntotal), int(self.index.d)

    def search(self, queries: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries.detach().to("cpu", torch.float32).numpy())
        scores, rows = self.index.search(q, k)
        return scores.astype(np.float32, copy=False), rows.astype(np.int64, copy=False)


class TorchSearcher:
    """Exact inner-product search over vectors held in one torch tensor (a GPU's, usually).

    The score matrix is made a chunk of rows at a time, so its memory is bounded (`max_queries` x
    `chunk_rows` scores); each chunk's best k come from `topk.select`, and the final k are rescored
    in float32 from the stored vectors (a half-precision score can tie or swap close neighbours).
    """

    # Groups of 1,024 scores: 13,100-13,500 queries/s over all of wiki-18 on an H200 at batches of 512-4,096,
    # against 11,000-11,500 with groups of 256 and 5,100 with torch.topk per chunk
    # (benchmarks/bench_dense_gpu.py; docs/retrieval.md).
    def __init__(self, vectors: torch.Tensor, *, chunk_rows: int = 1 << 20, max_queries: int = 1024,
                 selection: str = "group", group: int = 1024) -> None:
        self.vectors = vectors
        self.ntotal, self.dim = vectors.shape
        self.chunk_rows = max(group, chunk_rows // group * group)
        self.max_queries, self.selection, self.group = max_queries, selection, group

    @classmethod
    def from_file(cls, header: FaissHeader, device: torch.device, dtype: torch.dtype,
                  **kwargs: int | str) -> TorchSearcher:
        """Stream a flat index into a tensor on `device`: host memory holds one chunk at a time."""
        try:
            vectors = torch.empty((header.ntotal, header.dim), dtype=dtype, device=device)
        except torch.OutOfMemoryError:
            need = header.ntotal * header.dim * torch.finfo(dtype).bits // 8
            raise ConfigError(f"{header.path} needs {need / 2**30:.1f} GiB on {device} and it does not have that "
                              "much free; use a larger GPU, or --device cpu with faiss") from None
        with tqdm(total=header.ntotal * header.dim * 4, unit="B", unit_scale=True, desc="loading vectors",
                  disable=None) as bar:
            for start, chunk in flat_chunks(header, LOAD_ROWS):
                vectors[start:start + len(chunk)] = torch.from_numpy(chunk).to(device, dtype, non_blocking=False)
                bar.update(chunk.nbytes)
        return cls(vectors, **kwargs)  # type: ignore[arg-type]

    @torch.inference_mode()
    def search(self, queries: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        k_eff = min(k, self.ntotal)
        scores, rows = [], []
        for i in range(0, len(queries), self.max_queries):
            s, r = self._search(queries[i:i + self.max_queries], k_eff)
            scores.append(s)
            rows.append(r)
        s = torch.cat(scores).cpu().numpy() if scores else np.empty((0, k_eff), np.float32)
        r = torch.cat(rows).cpu().numpy() if rows else np.empty((0, k_eff), np.int64)
        if k_eff < k:  # pad as faiss does
            s = np.pad(s, ((0, 0), (0, k - k_eff)), constant_values=-np.inf)
            r = np.pad(r, ((0, 0), (0, k - k_eff)), constant_values=-1)
        return s, r

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = queries.to(self.vectors.device, self.vectors.dtype)
        best_values, best_rows = [], []
        for start in range(0, self.ntotal, self.chunk_rows):
            chunk = self.vectors[start:start + self.chunk_rows]
            values, rows = select(q @ chunk.T, min(k, len(chunk)), self.selection, self.group)
            best_values.append(values)
            best_rows.append(rows + start)
        values, rows = torch.cat(best_values, 1), torch.cat(best_rows, 1)
        rows = rows.gather(1, values.topk(k, dim=1).indices)
        # Rescore the k winners exactly (float32 products of the stored vectors), best first.
        exact = torch.einsum("qd,qkd->qk", queries.to(self.vectors.device, torch.float32),
                             self.vectors[rows].float())
        exact, order = exact.sort(dim=1, descending=True)
        return exact, rows.gather(1, order)
