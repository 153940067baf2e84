"""Tokenizing in worker processes: the same ids as the `transformers` tokenizer, and the same vectors."""

from __future__ import annotations

import pytest

from hfdistill.core.encoders import conventions
from hfdistill.retrieval.encoder import Encoder
from hfdistill.retrieval.tokenizing import TokenizerPool, TokenizerSettings, encode_arrays
from tests.dense_util import minilm

TEXTS = ["passage: What is the tallest mountain?", "passage: ünïcode — and « quotes »", "passage: " + "long " * 400,
         "passage: ", *(f"passage: Passage {i} about " + "mountains " * (i % 37) for i in range(120))]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load(conventions(str(minilm())), "cpu")


@pytest.mark.parametrize("max_length", [180, 256])
def test_the_arrays_are_what_the_transformers_tokenizer_gives(encoder: Encoder, max_length: int) -> None:
    settings = TokenizerSettings.of(encoder.tokenizer, max_length)
    assert settings is not None
    ours = encode_arrays(settings.build(), TEXTS, settings.type_ids)
    theirs = encoder.tokenizer(TEXTS, max_length=max_length, padding=True, truncation=True, return_tensors="np")
    assert set(ours) == set(theirs.keys())
    for name, array in ours.items():
        assert (array == theirs[name]).all(), name


def test_worker_processes_give_the_same_vectors_in_order(encoder: Encoder) -> None:
    in_process = encoder.encode_passages(TEXTS, 16)
    encoder.tokenizer_workers = 2
    try:
        pooled = encoder.encode_passages(TEXTS, 16)
    finally:
        encoder.tokenizer_workers = 0
        encoder.close()
    assert pooled.shape == in_process.shape and abs(pooled - in_process).max() < 1e-6


def test_the_pool_keeps_the_order_of_many_batches(encoder: Encoder) -> None:
    settings = TokenizerSettings.of(encoder.tokenizer, 32)
    assert settings is not None
    pool = TokenizerPool(settings, 2)
    try:
        batches = [[f"batch {b} text {i}" for i in range(b % 5 + 1)] for b in range(12)]
        out = list(pool.map(iter(batches)))
    finally:
        pool.close()
    assert [len(a["input_ids"]) for a in out] == [len(b) for b in batches]
    first = encode_arrays(settings.build(), batches[7], settings.type_ids)
    assert (out[7]["input_ids"] == first["input_ids"]).all()
