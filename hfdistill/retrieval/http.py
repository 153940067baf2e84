"""A client of a Search-R1 retrieval server (`POST /retrieve`) over aiohttp; the one module that
talks HTTP to it, translating aiohttp's exceptions into `RetrievalError`s."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from urllib.parse import urlsplit

import aiohttp
import orjson

from hfdistill.core.errors import RetrievalError
from hfdistill.core.retry import RetryPolicy, is_transient, parse_retry_after, with_retries
from hfdistill.core.types import Document
from hfdistill.retrieval.protocol import parse_search_response

__all__ = ["HttpRetriever"]

_JSON = {"Content-Type": "application/json"}


class HttpRetriever:
    """A client of a Search-R1-style `POST /retrieve` server (one request per tool call)."""

    def __init__(self, url: str, policy: RetryPolicy) -> None:
        self.url = url
        self.policy = policy
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0)  # the rollout window is the limit
            timeout = aiohttp.ClientTimeout(total=min(self.policy.timeout, 300))
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def search(self, queries: Sequence[str], topk: int) -> list[list[Document]]:
        body = orjson.dumps({"queries": list(queries), "topk": topk, "return_scores": True})
        return await with_retries(lambda _n: self._post_once(body, len(queries)), self.policy,
                                  what="retrieval call")

    async def probe(self) -> None:
        """Fail early, with the URL and what to check, when the server is down or speaks another API."""
        body = orjson.dumps({"queries": ["test"], "topk": 1, "return_scores": True})
        policy = dataclasses.replace(self.policy, attempts=min(self.policy.attempts, 3))
        await with_retries(lambda _n: self._post_once(body, 1), policy, what="retrieval probe")

    async def _post_once(self, body: bytes, n_queries: int) -> list[list[Document]]:
        try:
            async with self._get_session().post(self.url, data=body, headers=_JSON) as resp:
                if resp.status != 200:
                    raise _status_error(resp.status, await resp.text(), self.url,
                                        resp.headers.get("Retry-After"))
                payload = orjson.loads(await resp.read())
        except (aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError) as e:
            raise RetrievalError(f"cannot reach the retrieval server at {self.url} ({e or type(e).__name__}); "
                                 "start it or fix RETRIEVAL_URL / --retrieval_url", transient=True,
                                 cause="retrieval_connection") from None
        except asyncio.TimeoutError:
            raise RetrievalError(f"retrieval server {self.url} timed out", transient=True,
                                 cause="retrieval_timeout") from None
        except ValueError as e:
            raise RetrievalError(f"retrieval server {self.url} answered invalid JSON ({e})",
                                 cause="retrieval_bad_response") from None
        try:
            return parse_search_response(payload, n_queries)
        except ValueError as e:
            raise RetrievalError(f"retrieval server {self.url} is not a Search-R1 /retrieve endpoint: {e}",
                                 cause="retrieval_bad_response") from None


def _status_error(status: int, text: str, url: str, retry_after: str | None) -> RetrievalError:
    transient = is_transient(status)
    hint = ""
    if status in (404, 405):
        hint = "; check RETRIEVAL_URL / --retrieval_url is the retrieval server's /retrieve endpoint"
        if urlsplit(url).port == 8000:  # RETRIEVAL_URL's default port (the original script's) is also vLLM's
            hint += (": port 8000 is vLLM's default, so it probably points at the vLLM server; start the retrieval "
                     "server on another port (e.g. `hfdistill serve-retriever --corpus C.jsonl --port 8001`) and "
                     "set RETRIEVAL_URL=http://127.0.0.1:8001/retrieve")
    elif status == 422:
        hint = "; the server does not accept Search-R1 requests ({\"queries\": [...], \"topk\": k})"
    return RetrievalError(f"retrieval server {url} answered HTTP {status}: {text.strip()[:200]}{hint}",
                          transient=transient, cause=f"retrieval_http_{status}",
                          retry_after=parse_retry_after(retry_after) if transient else None)
