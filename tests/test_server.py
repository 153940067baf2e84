"""The Search-R1 retrieval server, over real HTTP on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hfdistill.core.errors import ConfigError
from hfdistill.retrieval.bm25 import BM25Retriever
from hfdistill.retrieval.server import make_app, ready
from tests.corpus_util import CITIES, write_jsonl
from tests.fakes import Served

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    corpus = write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", CITIES)
    retriever = BM25Retriever.load(corpus)
    served = Served(make_app(retriever, default_topk=2))
    yield served.url
    served.close()
    retriever.close()


def post(url: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}/retrieve", data=data, method="POST",
                                 headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_with_scores_shape(server: str) -> None:
    status, body = post(server, {"queries": ["zyzzyva genus", "germany"], "topk": 1, "return_scores": True})
    assert status == 200
    [[hit], [hit2]] = body["result"]
    assert set(hit) == {"document", "score"}
    assert hit["document"] == {"id": "3", "title": "Zyzzyva", "text": CITIES[3]["contents"].split("\n", 1)[1],
                               "contents": CITIES[3]["contents"]}
    assert isinstance(hit["score"], float)
    assert hit["score"] > 0
    assert hit2["document"]["id"] == "1"


def test_without_scores_shape_is_plain_documents(server: str) -> None:
    status, body = post(server, {"queries": ["paris"], "topk": 1})
    assert status == 200
    assert body == {"result": [[{"id": "0", "title": "Paris", "text": CITIES[0]["contents"].split("\n", 1)[1],
                                 "contents": CITIES[0]["contents"]}]]}


def test_request_as_verl_search_tool_sends_it(server: str) -> None:
    """verl/tools/utils/search_r1_like_utils.py: call_search_api + _passages2string."""
    payload = {"queries": ["capital of spain", "kyoto japan"], "topk": 3, "return_scores": True}
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    status, body = post(server, payload, headers)
    assert status == 200
    assert len(body["result"]) == 2
    for retrieval in body["result"]:
        for doc_item in retrieval:
            content = doc_item["document"]["contents"]
            title, text = content.split("\n")[0], "\n".join(content.split("\n")[1:])
            assert title.startswith('"')
            assert text
    assert body["result"][0][0]["document"]["contents"].startswith('"Madrid"\n')


def test_topk_default_and_explicit(server: str) -> None:
    _, default = post(server, {"queries": ["capital"]})
    _, three = post(server, {"queries": ["capital"], "topk": 3})
    _, null = post(server, {"queries": ["capital"], "topk": None})
    assert len(default["result"][0]) == 2  # the server's --topk
    assert len(three["result"][0]) == 3
    assert len(null["result"][0]) == 2


def test_topk_larger_than_corpus(server: str) -> None:
    status, body = post(server, {"queries": ["capital"], "topk": 50, "return_scores": True})
    assert status == 200
    assert sorted(h["document"]["id"] for h in body["result"][0]) == ["0", "1", "2", "5"]


@pytest.mark.parametrize("query", ["", "   ", "the of"])
def test_empty_query_gets_empty_list(server: str, query: str) -> None:
    status, body = post(server, {"queries": [query, "paris"], "return_scores": True})
    assert status == 200
    assert body["result"][0] == []
    assert body["result"][1][0]["document"]["id"] == "0"


def test_no_queries_gets_empty_result(server: str) -> None:
    assert post(server, {"queries": []}) == (200, {"result": []})


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        pytest.param(b"{not json", "body is not valid JSON", id="not-json"),
        pytest.param(b"", "body is not valid JSON", id="empty-body"),
        pytest.param({"topk": 3}, '"queries" is required', id="missing-queries"),
        pytest.param([["q"]], "body must be a JSON object", id="body-is-list"),
        pytest.param({"queries": "paris"}, '"queries" must be a list of strings', id="queries-string"),
        pytest.param({"queries": ["a", 1]}, '"queries" must be a list of strings', id="queries-with-int"),
        pytest.param({"queries": ["a"], "topk": 0}, '"topk" must be a positive integer, got 0', id="topk-0"),
        pytest.param({"queries": ["a"], "topk": -2}, '"topk" must be a positive integer', id="topk-negative"),
        pytest.param({"queries": ["a"], "topk": "3"}, '"topk" must be a positive integer, got "3"', id="topk-str"),
        pytest.param({"queries": ["a"], "topk": 2.5}, '"topk" must be a positive integer', id="topk-float"),
        pytest.param({"queries": ["a"], "topk": True}, '"topk" must be a positive integer', id="topk-bool"),
        pytest.param({"queries": ["a"], "return_scores": "yes"}, '"return_scores" must be true or false',
                     id="return-scores-str"),
    ],
)
def test_malformed_body_is_422_with_detail(server: str, body: Any, detail: str) -> None:
    status, answer = post(server, body)
    assert status == 422
    assert detail in answer["detail"]


def test_health(server: str) -> None:
    with urllib.request.urlopen(f"{server}/health", timeout=10) as resp:
        assert json.loads(resp.read()) == {"status": "ok", "documents": len(CITIES)}


def test_while_loading_it_answers_503_then_serves(tmp_path: Path) -> None:
    app = make_app(None, default_topk=1)
    served = Served(app)
    try:
        with pytest.raises(urllib.error.HTTPError) as health:
            urllib.request.urlopen(f"{served.url}/health", timeout=10)
        assert health.value.code == 503 and json.loads(health.value.read()) == {"status": "loading"}
        status, body = post(served.url, {"queries": ["paris"]})
        assert status == 503 and "still loading" in body["detail"]
        with BM25Retriever.load(write_jsonl(tmp_path / "c.jsonl", CITIES)) as retriever:
            ready(app, retriever)
            assert post(served.url, {"queries": ["germany"]})[1]["result"][0][0]["id"] == "1"
    finally:
        served.close()


def test_make_app_rejects_bad_default_topk(tmp_path: Path) -> None:
    with BM25Retriever.load(write_jsonl(tmp_path / "c.jsonl", CITIES)) as r, \
            pytest.raises(ConfigError, match="--topk must be >= 1, got 0"):
        make_app(r, 0)


def test_serve_builds_then_serves_until_sigterm(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", CITIES)
    script = ("import logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s');"
              "from hfdistill.retrieval.server import serve; serve(sys.argv[1], port=0, topk=1)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(corpus)], stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        url = _wait_for_url(proc)
        status, body = post(url.removesuffix("/retrieve"), {"queries": ["germany"], "return_scores": True})
        assert status == 200
        assert [h["document"]["id"] for h in body["result"][0]] == ["1"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
    assert (tmp_path / "c.jsonl.bm25s" / "manifest.json").is_file()


def _wait_for_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    for line in proc.stderr:  # the URL line comes after the index is built
        if m := re.search(r"(http://127\.0\.0\.1:\d+/retrieve)", line):
            return m.group(1)
    raise AssertionError(f"server exited ({proc.wait()}) without logging its URL")
