"""A Search-R1-compatible retrieval server over the embedded BM25 retriever (aiohttp).

    POST /retrieve  {"queries": [...], "topk": 3, "return_scores": true}
        -> {"result": [[{"document": {"id", "title", "text", "contents"}, "score": 0.83}, ...], ...]}
        without scores: {"result": [[{"id", "title", "text", "contents"}, ...], ...]}
    GET /health     -> {"status": "ok", "documents": N}

A malformed body gets HTTP 422 `{"detail": "..."}`, as Search-R1's FastAPI server answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from typing import Any

from aiohttp import web

from hfdistill.core.errors import ConfigError, HfdistillError
from hfdistill.core.types import Document
from hfdistill.retrieval.bm25 import BM25Retriever

__all__ = ["make_app", "serve"]

logger = logging.getLogger(__name__)

RETRIEVER = web.AppKey("retriever", BM25Retriever)
DEFAULT_TOPK = web.AppKey("default_topk", int)


class _BadRequest(Exception):
    """A request body that does not fit the Search-R1 schema (answered with 422)."""


def make_app(retriever: BM25Retriever, default_topk: int = 3) -> web.Application:
    """The web app; `default_topk` answers requests that leave `topk` out."""
    if default_topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {default_topk}")
    app = web.Application()
    app[RETRIEVER] = retriever
    app[DEFAULT_TOPK] = default_topk
    app.router.add_post("/retrieve", _retrieve)
    app.router.add_get("/health", _health)
    return app


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "documents": len(request.app[RETRIEVER])})


async def _retrieve(request: web.Request) -> web.Response:
    try:
        queries, topk, return_scores = _parse_body(await _read_json(request), request.app[DEFAULT_TOPK])
    except _BadRequest as e:
        return web.json_response({"detail": str(e)}, status=422)
    try:
        # One worker-thread hop for the whole batch: the event loop keeps serving other requests.
        results = await request.app[RETRIEVER].search(queries, topk)
    except HfdistillError as e:
        logger.error("retrieval failed: %s", e)
        return web.json_response({"detail": str(e)}, status=500)
    return web.json_response({"result": [_render(docs, return_scores) for docs in results]})


async def _read_json(request: web.Request) -> Any:
    try:
        return json.loads(await request.text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _BadRequest(f"body is not valid JSON: {e}") from None


def _parse_body(body: Any, default_topk: int) -> tuple[list[str], int, bool]:
    """Validate like Search-R1's pydantic model: queries: list[str], topk: int | None, return_scores: bool."""
    if not isinstance(body, dict):
        raise _BadRequest('body must be a JSON object like {"queries": ["..."], "topk": 3}')
    if "queries" not in body:
        raise _BadRequest('"queries" is required: a list of query strings')
    queries = body["queries"]
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise _BadRequest('"queries" must be a list of strings')
    topk = body.get("topk")
    if topk is None:
        topk = default_topk
    elif isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise _BadRequest(f'"topk" must be a positive integer, got {json.dumps(topk)}')
    return_scores = body.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise _BadRequest(f'"return_scores" must be true or false, got {json.dumps(return_scores)}')
    return queries, topk, return_scores


def _render(docs: list[Document], with_scores: bool) -> list[dict[str, Any]]:
    def doc_json(d: Document) -> dict[str, Any]:
        return {"id": d.id, "title": d.title, "text": d.text, "contents": d.contents}

    if with_scores:
        return [{"document": doc_json(d), "score": d.score} for d in docs]
    return [doc_json(d) for d in docs]


def serve(corpus: str, host: str = "127.0.0.1", port: int = 8000, index_dir: str | None = None,
          topk: int = 3) -> None:
    """Load (or build) the index of `corpus`, then serve until SIGINT or SIGTERM."""
    if topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {topk}")
    retriever = BM25Retriever.load(corpus, index_dir)  # before binding: a build can take minutes
    try:
        asyncio.run(_serve_until_signal(make_app(retriever, topk), host, port))
    finally:
        retriever.close()


async def _serve_until_signal(app: web.Application, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port") from None
        bound = runner.addresses[0][1] if runner.addresses else port  # the real port when port=0
        logger.info("retrieval server for %d passages at http://%s:%d/retrieve",
                    len(app[RETRIEVER]), host, bound)
        await stop.wait()
        logger.info("stopping the retrieval server")
    finally:
        await runner.cleanup()
