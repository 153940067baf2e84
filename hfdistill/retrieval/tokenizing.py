"""Tokenizing batches of passages in worker processes, ahead of the GPU, for an index build.

On a GPU the model encodes a batch of 512 e5-base passages in ~40 ms, while one process needs ~100 ms to
tokenize it: the Rust tokenizer is fast, but turning its encodings into arrays is per-text Python work
that holds the GIL (benchmarks/bench_dense_gpu.py built e5-base and all-MiniLM-L6 at the same ~4,500
passages/s on an H200). A pool of processes, each with its own copy of the model's Rust tokenizer,
tokenizes the next batches while the GPU runs the current one. The workers import only `tokenizers` and
numpy, and start with `spawn` (a CUDA process must not fork).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TokenizerPool", "TokenizerSettings", "encode_arrays"]


@dataclass(frozen=True)
class TokenizerSettings:
    """What a worker rebuilds the tokenizer from: its Rust serialisation, and how it truncates and pads
    (as `tokenizer(texts, max_length=n, padding=True, truncation=True)` does)."""

    serialized: str
    max_length: int
    padding_side: str
    pad_id: int
    pad_type_id: int
    pad_token: str
    type_ids: bool  # the model takes token_type_ids

    @classmethod
    def of(cls, tokenizer: Any, max_length: int) -> TokenizerSettings | None:
        """The settings of a fast (Rust-backed) `transformers` tokenizer; None for a slow one."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or tokenizer.pad_token_id is None:
            return None
        return cls(backend.to_str(), max_length, tokenizer.padding_side, tokenizer.pad_token_id,
                   tokenizer.pad_token_type_id, tokenizer.pad_token, "token_type_ids" in tokenizer.model_input_names)

    def build(self) -> Any:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(self.serialized)
        tokenizer.enable_truncation(self.max_length)
        tokenizer.enable_padding(direction=self.padding_side, pad_id=self.pad_id, pad_type_id=self.pad_type_id,
                                 pad_token=self.pad_token)
        return tokenizer


def encode_arrays(tokenizer: Any, texts: Sequence[str], type_ids: bool) -> dict[str, np.ndarray]:
    """input_ids, attention_mask (and token_type_ids) of a batch, padded to its longest text."""
    encodings = tokenizer.encode_batch(list(texts))
    out = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
           "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}
    if type_ids:
        out["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
    return out


_WORKER: tuple[Any, bool] | None = None  # this worker process's tokenizer


def _start(settings: TokenizerSettings) -> None:
    global _WORKER
    _WORKER = (settings.build(), settings.type_ids)


def _encode(texts: list[str]) -> dict[str, np.ndarray]:
    assert _WORKER is not None  # (set by the pool's initializer)
    return encode_arrays(_WORKER[0], texts, _WORKER[1])


class TokenizerPool:
    """`workers` processes that tokenize batches; `map` yields their arrays in order, keeping at most
    twice as many batches in flight as there are workers (memory stays flat)."""

    def __init__(self, settings: TokenizerSettings, workers: int) -> None:
        self.workers = workers
        self._pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start, initargs=(settings,))

    def map(self, batches: Iterator[list[str]]) -> Iterator[dict[str, np.ndarray]]:
        pending: list[concurrent.futures.Future[dict[str, np.ndarray]]] = []
        for batch in batches:
            pending.append(self._pool.submit(_encode, batch))
            if len(pending) > 2 * self.workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)
