"""A client of a Search-R1 retrieval server (`POST /retrieve`) over the HTTP edge (hfdistill/edge.py),
which names and retries every fault; this module knows the API and what a refusal of it means."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import orjson

from hfdistill.core.errors import RetrievalError, ServiceError
from hfdistill.core.retry import RetryPolicy
from hfdistill.core.types import Document
from hfdistill.edge import Edge, Server, server_words
from hfdistill.retrieval.protocol import parse_search_response

__all__ = ["HttpRetriever"]

_TIMEOUT = 300.0  # a search is quick; a request open this long is a server that stopped answering


class HttpRetriever:
    """A client of a Search-R1-style `POST /retrieve` server (one request per tool call)."""

    def __init__(self, url: str, policy: RetryPolicy) -> None:
        self.url = url
        self.policy = policy
        self.server = Server("retrieval", url, RetrievalError, name="retrieval server",
                             fix="start it or fix RETRIEVAL_URL / --retrieval_url")
        self._edge = Edge(policy, headers={"Content-Type": "application/json"})
        self._timeout = min(policy.timeout, _TIMEOUT)
        self._parsers: dict[int, Callable[[bytes], list[list[Document]]]] = {}  # by query count, made once each

    async def aclose(self) -> None:
        await self._edge.aclose()

    async def search(self, queries: Sequence[str], topk: int) -> list[list[Document]]:
        body = orjson.dumps({"queries": list(queries), "topk": topk, "return_scores": True})
        return await self._edge.call(self.server, self.url, body, parse=self._parser(len(queries)), refuse=_refusal,
                                     timeout=self._timeout)

    async def probe(self) -> None:
        """Fail early, with the URL and what to check, when the server is down or speaks another API."""
        body = orjson.dumps({"queries": ["test"], "topk": 1, "return_scores": True})
        await self._edge.call(self.server, self.url, body, parse=self._parser(1), refuse=_refusal,
                              timeout=self._timeout, policy=self.policy.for_probe())

    def _parser(self, n_queries: int) -> Callable[[bytes], list[list[Document]]]:
        parse = self._parsers.get(n_queries)
        if parse is None:
            parse = self._parsers[n_queries] = functools.partial(_documents, n_queries=n_queries)
        return parse


def _documents(payload: bytes, n_queries: int) -> list[list[Document]]:
    try:
        return parse_search_response(orjson.loads(payload), n_queries)
    except ValueError as e:
        raise ValueError(f"not a Search-R1 /retrieve answer: {e}") from None


def _refusal(server: Server, status: int, payload: bytes, retry_after: str | None) -> ServiceError | None:
    """What a refusal of the Search-R1 API means, or None for the edge's reading (5xx, 429, other 4xx)."""
    if status in (404, 405):
        hint = "; check RETRIEVAL_URL / --retrieval_url is the retrieval server's /retrieve endpoint"
        if urlsplit(server.url).port == 8000:  # RETRIEVAL_URL's default port (the original script's) is vLLM's
            hint += (": port 8000 is vLLM's default, so it probably points at the vLLM server; start the retrieval "
                     "server on another port (e.g. `hfdistill serve-retriever --corpus C.jsonl --port 8001`) and "
                     "set RETRIEVAL_URL=http://127.0.0.1:8001/retrieve")
    elif status == 422:
        hint = "; the server does not accept Search-R1 requests ({\"queries\": [...], \"topk\": k})"
    else:
        return None
    return server.fail(f"http_{status}", f"retrieval server {server.url} answered HTTP {status}: "
                       f"{server_words(payload)[:200]}{hint}", transient=False)
