"""Nearest neighbours by inner product: faiss on CPU and the torch searcher (the GPU's, run here on CPU at
small sizes) agree with an exact numpy ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hfdistill.retrieval import knn
from hfdistill.retrieval.faiss_file import FlatWriter, read_header
from hfdistill.retrieval.knn import FaissSearcher, TorchSearcher


def _index(tmp_path: Path, n: int = 3000, d: int = 32) -> tuple[Path, np.ndarray]:
    x = np.random.default_rng(7).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    FlatWriter(tmp_path / "x.index", d, n).write([x])
    return tmp_path / "x.index", x


def _exact(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("searcher", ["faiss", "torch-group", "torch-topk", "torch-small-chunks"])
def test_searchers_agree_with_an_exact_ranking(tmp_path: Path, searcher: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path, x = _index(tmp_path)
    q = np.random.default_rng(8).standard_normal((40, x.shape[1]), dtype=np.float32)
    header = read_header(path)
    if searcher == "faiss":
        s = FaissSearcher(header)
    else:
        monkeypatch.setattr(knn, "LOAD_ROWS", 700)  # several reads from the file
        chunk = 512 if searcher == "torch-small-chunks" else 1 << 20
        s = TorchSearcher.from_file(header, torch.device("cpu"), torch.float32, chunk_rows=chunk, group=64,
                                    selection="topk" if searcher == "torch-topk" else "group", max_queries=16)
    scores, rows = s.search(torch.from_numpy(q), 5)
    assert np.array_equal(rows, _exact(x, q, 5))
    assert np.allclose(scores, np.take_along_axis(q @ x.T, rows, axis=1), atol=1e-5)
    assert scores.dtype == np.float32 and rows.dtype == np.int64


def test_more_neighbours_than_vectors_pad_like_faiss(tmp_path: Path) -> None:
    path, _ = _index(tmp_path, n=4, d=8)
    q = torch.ones(2, 8)
    searcher = TorchSearcher.from_file(read_header(path), torch.device("cpu"), torch.float32)
    torch_scores, torch_rows = searcher.search(q, 6)
    _, faiss_rows = FaissSearcher(read_header(path)).search(q, 6)
    assert np.array_equal(torch_rows[:, 4:], faiss_rows[:, 4:]) and (torch_rows[:, 4:] == -1).all()
    assert set(torch_rows[0, :4]) == set(range(4)) and np.isneginf(torch_scores[:, 4:]).all()
