"""Encoder conventions per model family (Search-R1's), and the dense options' validation."""

from __future__ import annotations

import pytest

from hfdistill.core.encoders import BGE_QUERY_INSTRUCTION, DenseOptions, EncoderOverrides, conventions, family_of
from hfdistill.core.errors import ConfigError


@pytest.mark.parametrize(("name", "family"), [
    pytest.param("intfloat/e5-base-v2", "e5", id="hub-e5"),
    pytest.param("intfloat/multilingual-e5-large", "e5", id="hub-e5-multilingual"),
    pytest.param("BAAI/bge-large-en-v1.5", "bge", id="hub-bge"),
    pytest.param("facebook/dpr-question_encoder-single-nq-base", "dpr", id="hub-dpr"),
    pytest.param("sentence-transformers/all-MiniLM-L6-v2", "other", id="hub-other"),
    pytest.param("/models/e5-base-v2", "e5", id="local-e5"),
    pytest.param("/data/e5-runs/minilm", "other", id="local-dir-named-by-its-last-part"),
    pytest.param("./bge-small/", "bge", id="relative-trailing-slash"),
])
def test_family_of(name: str, family: str) -> None:
    assert family_of(name) == family


@pytest.mark.parametrize(("name", "query", "passage", "normalize"), [
    pytest.param("intfloat/e5-base-v2", "query: ", "passage: ", True, id="e5"),
    pytest.param("BAAI/bge-base-en", BGE_QUERY_INSTRUCTION, "", True, id="bge-instruction-on-queries-only"),
    pytest.param("facebook/dpr-ctx_encoder-single-nq-base", "", "", False, id="dpr-not-normalised"),
    pytest.param("sentence-transformers/all-MiniLM-L6-v2", "", "", True, id="other"),
])
def test_conventions_follow_search_r1(name: str, query: str, passage: str, normalize: bool) -> None:
    spec = conventions(name)
    assert (spec.query_prefix, spec.passage_prefix, spec.normalize) == (query, passage, normalize)
    assert (spec.pooling, spec.query_max_length, spec.passage_max_length) == ("mean", 256, 180)


def test_overrides_replace_only_what_they_give() -> None:
    spec = conventions("intfloat/e5-base-v2", EncoderOverrides(pooling="cls", query_max_length=64))
    assert (spec.query_prefix, spec.pooling, spec.query_max_length) == ("query: ", "cls", 64)
    assert conventions("x", EncoderOverrides(query_prefix="")).query_prefix == ""


def test_spec_round_trips_through_a_manifest() -> None:
    spec = conventions("intfloat/e5-base-v2")
    assert type(spec).from_dict({**spec.to_dict(), "unknown_later_field": 1}) == spec


@pytest.mark.parametrize(("make", "message"), [
    pytest.param(lambda: conventions("m", EncoderOverrides(pooling="max")), "--pooling must be one of", id="pooling"),
    pytest.param(lambda: conventions("m", EncoderOverrides(query_max_length=1)), "--query-max-length",
                 id="max-length"),
    pytest.param(lambda: DenseOptions(index="i", device="tpu"), "--device must be one of", id="device"),
    pytest.param(lambda: DenseOptions(index="i", batch_wait_ms=-1), "--batch-wait-ms", id="wait"),
    pytest.param(lambda: DenseOptions(index="i", max_batch=0), "--max-batch must be >= 1", id="max-batch"),
])
def test_bad_settings_are_config_errors(make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()  # type: ignore[operator]
