"""DistillConfig validates every option where it enters, naming the option and the fix."""

from __future__ import annotations

import pytest

from hfdistill.core.config import DistillConfig
from hfdistill.core.errors import ConfigError


@pytest.mark.parametrize(("changes", "match"), [
    ({"max_assistant_turns": 0}, "--max_assistant_turns must be >= 1, got 0"),
    ({"temperature": 3}, "--temperature must be between 0 and 2"),
    ({"top_p": 0}, r"--top_p must be in \(0, 1\]"),
    ({"tool_call_mode": "json"}, "--tool-call-mode must be one of auto, native, text"),
    ({"observation_format": "xml"}, "--observation-format must be one of seed, verl"),
    ({"vllm_url": "localhost:8000"}, "is not an http"),
    ({"vllm_url": " , "}, "VLLM_URL / --vllm_url is empty"),
    ({"retrieval_url": "ftp://x/retrieve"}, "RETRIEVAL_URL"),
])
def test_bad_values_are_refused_by_name(changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DistillConfig(**changes)


def test_a_corpus_needs_no_retrieval_url_and_endpoints_are_a_list() -> None:
    config = DistillConfig(vllm_url="http://a:1/v1/, http://b:2/v1", retrieval_url="not a url", corpus="c.jsonl")
    assert config.endpoints == ("http://a:1/v1", "http://b:2/v1")
    assert config.window == 1024
