"""faiss files read and written without faiss, checked against faiss itself."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from hfdistill.core.errors import ConfigError
from hfdistill.retrieval.faiss_file import FlatWriter, flat_chunks, read_header


def _vectors(n: int, d: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, d), dtype=np.float32)


def test_a_streamed_flat_index_is_byte_for_byte_what_faiss_writes(tmp_path: Path) -> None:
    x = _vectors(50, 16)
    FlatWriter(tmp_path / "ours.index", 16, 50).write([x[:20], x[20:45], x[45:]])
    index = faiss.index_factory(16, "Flat", faiss.METRIC_INNER_PRODUCT)  # Search-R1's index_builder
    index.add(x)
    faiss.write_index(index, str(tmp_path / "faiss.index"))
    assert (tmp_path / "ours.index").read_bytes() == (tmp_path / "faiss.index").read_bytes()
    assert faiss.read_index(str(tmp_path / "ours.index")).ntotal == 50


def test_chunks_read_back_every_vector_in_order(tmp_path: Path) -> None:
    x = _vectors(1003, 8)
    FlatWriter(tmp_path / "x.index", 8, len(x)).write([x])
    header = read_header(tmp_path / "x.index")
    assert (header.dim, header.ntotal, header.kind) == (8, 1003, "Flat (inner product)")
    chunks = list(flat_chunks(header, 256))
    assert [start for start, _ in chunks] == [0, 256, 512, 768]
    assert np.array_equal(np.concatenate([c for _, c in chunks]), x)


def test_the_header_of_other_index_types(tmp_path: Path) -> None:
    index = faiss.index_factory(8, "HNSW16", faiss.METRIC_INNER_PRODUCT)
    index.add(_vectors(100, 8))
    faiss.write_index(index, str(tmp_path / "h.index"))
    header = read_header(tmp_path / "h.index")
    assert (header.kind, header.dim, header.ntotal, header.is_flat_ip) == ("HNSW", 8, 100, False)


def _truncated(tmp_path: Path) -> Path:
    FlatWriter(tmp_path / "t.index", 8, 10).write([_vectors(10, 8)])
    data = (tmp_path / "t.index").read_bytes()
    (tmp_path / "t.index").write_bytes(data[:-8])
    return tmp_path / "t.index"


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _l2(tmp_path: Path) -> Path:
    index = faiss.IndexFlatL2(8)
    index.add(_vectors(10, 8))
    faiss.write_index(index, str(tmp_path / "l2.index"))
    return tmp_path / "l2.index"


@pytest.mark.parametrize(("make", "message"), [
    pytest.param(lambda p: p / "nope.index", "no such file or directory", id="missing"),
    pytest.param(lambda p: _file(p / "e", b""), "only 0 bytes long", id="empty"),
    pytest.param(lambda p: _file(p / "j", b'{"id": "0", "contents": "not an index"}\n' * 3), "is not a faiss index",
                 id="a-jsonl-file"),
    pytest.param(_l2, "ranks by L2 distance", id="l2-metric"),
])
def test_unusable_files_are_named(tmp_path: Path, make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_header(make(tmp_path))  # type: ignore[operator]


def test_a_truncated_flat_index_fails_its_check(tmp_path: Path) -> None:
    header = read_header(_truncated(tmp_path))
    with pytest.raises(ConfigError, match="is truncated or damaged"):
        header.check_flat()
