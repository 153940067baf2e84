"""A Search-R1-compatible retrieval server over an embedded retriever, BM25, dense or hybrid (aiohttp).

    POST /retrieve  {"queries": [...], "topk": 3, "return_scores": true}
        -> {"result": [[{"document": {"id", "title", "text", "contents"}, "score": 0.83}, ...], ...]}
        without scores: {"result": [[{"id", "title", "text", "contents"}, ...], ...]}
    GET /health     -> {"status": "ok", "documents": N}; 503 {"status": "loading"} until the retriever is
                       loaded and warmed up (`/retrieve` answers 503 with Retry-After meanwhile)

A malformed body gets HTTP 422 `{"detail": "..."}`, as Search-R1's FastAPI server answers. The port is
bound first, so a taken port fails at once, then the retriever loads on a thread: a wiki-scale index
takes minutes, during which the server says so rather than refusing connections. The event loop never
runs a search: BM25 runs on a worker thread, dense searches on the batcher's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hfdistill.core.encoders import DenseOptions
from hfdistill.core.errors import ConfigError, HfdistillError
from hfdistill.core.types import Document
from hfdistill.retrieval.embedded import open_embedded
from hfdistill.retrieval.protocol import EmbeddedRetriever

__all__ = ["make_app", "serve"]

logger = logging.getLogger(__name__)


@dataclass
class _Serving:
    retriever: EmbeddedRetriever | None  # None while it loads


SERVING = web.AppKey("serving", _Serving)
DEFAULT_TOPK = web.AppKey("default_topk", int)
_LOADING_RETRY_AFTER = "5"


class _BadRequest(Exception):
    """A request body that does not fit the Search-R1 schema (answered with 422)."""


def make_app(retriever: EmbeddedRetriever | None, default_topk: int = 3) -> web.Application:
    """The web app; `default_topk` answers requests that leave `topk` out. With `retriever` None it
    answers 503 until `ready(app, retriever)`."""
    if default_topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {default_topk}")
    app = web.Application()
    app[SERVING] = _Serving(retriever)
    app[DEFAULT_TOPK] = default_topk
    app.router.add_post("/retrieve", _retrieve)
    app.router.add_get("/health", _health)
    return app


def ready(app: web.Application, retriever: EmbeddedRetriever) -> None:
    """The retriever is loaded and warm: start answering."""
    app[SERVING].retriever = retriever


async def _health(request: web.Request) -> web.Response:
    retriever = request.app[SERVING].retriever
    if retriever is None:
        return web.json_response({"status": "loading"}, status=503)
    return web.json_response({"status": "ok", "documents": len(retriever)})


async def _retrieve(request: web.Request) -> web.Response:
    retriever = request.app[SERVING].retriever
    if retriever is None:
        return web.json_response({"detail": "the retriever is still loading; retry shortly"}, status=503,
                                 headers={"Retry-After": _LOADING_RETRY_AFTER})
    try:
        queries, topk, return_scores = _parse_body(await _read_json(request), request.app[DEFAULT_TOPK])
    except _BadRequest as e:
        return web.json_response({"detail": str(e)}, status=422)
    try:
        # Off the event loop (a worker thread, or the dense batcher's): the loop keeps serving requests.
        results = await retriever.search(queries, topk)
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
          topk: int = 3, *, retriever: str = "bm25", dense: DenseOptions | None = None) -> None:
    """Bind, load (or build) the `retriever` of `corpus`, then serve until SIGINT or SIGTERM."""
    if topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {topk}")
    asyncio.run(_serve_until_signal(lambda: open_embedded(corpus, retriever, index_dir=index_dir, dense=dense),
                                    make_app(None, topk), host, port))


async def _serve_until_signal(load: Callable[[], EmbeddedRetriever], app: web.Application, host: str,
                              port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    retriever: EmbeddedRetriever | None = None
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port") from None
        bound = runner.addresses[0][1] if runner.addresses else port  # the real port when port=0
        logger.info("listening on http://%s:%d; loading the retriever (/health answers 503 until it is ready)",
                    host, bound)
        retriever = await _load_or_stop(load, stop)
        if retriever is None:
            return
        ready(app, retriever)
        logger.info("retrieval server for %d passages at http://%s:%d/retrieve", len(retriever), host, bound)
        await stop.wait()
        logger.info("stopping the retrieval server")
    finally:
        await runner.cleanup()
        if retriever is not None:
            retriever.close()


async def _load_or_stop(load: Callable[[], EmbeddedRetriever], stop: asyncio.Event) -> EmbeddedRetriever | None:
    """`load()` on a daemon thread (a signal during a long load exits without waiting for it); None if stopped."""
    loop = asyncio.get_running_loop()
    loaded: asyncio.Future[EmbeddedRetriever] = loop.create_future()

    def run() -> None:
        try:
            result = load()
        except BaseException as e:  # noqa: BLE001 - raised again by the awaiting coroutine
            loop.call_soon_threadsafe(_settle, loaded, None, e)
        else:
            loop.call_soon_threadsafe(_settle, loaded, result, None)

    threading.Thread(target=run, name="hfdistill-load", daemon=True).start()
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({loaded, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not loaded.done():
        logger.info("stopped while loading")
        return None
    return loaded.result()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
