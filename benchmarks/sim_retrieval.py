"""A simulated Search-R1 retrieval server (docs/retrieval.md) with a configurable latency.

`POST /retrieve` with `{"queries": [...], "topk": k, "return_scores": true}` answers, after
`--latency` seconds, `{"result": [[{"document": {"id", "contents"}, "score": s}, ...], ...]}`:
one inner list per query, documents deterministic per query. A body without a `queries` list of
strings gets FastAPI's 422, like the reference server.

    python benchmarks/sim_retrieval.py --port 8001 --latency 0.02
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import sys
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["RetrievalConfig", "make_app", "start"]

_VOCABULARY = (
    "river valley founded century museum railway author album director treaty province island "
    "engineer symphony cathedral dynasty merchant harbour observatory senator novelist regiment"
)
WORDS = _VOCABULARY.split()


@dataclass
class RetrievalConfig:
    latency: float = 0.02  # seconds per request, whatever the number of queries
    passage_words: int = 90  # about a Wikipedia passage of the Search-R1 corpus


@dataclass
class Counters:
    requests: int = 0
    queries: int = 0
    errors: int = 0


CONFIG = web.AppKey("config", RetrievalConfig)
COUNTERS = web.AppKey("counters", Counters)


def _document(query: str, rank: int, words: int) -> dict[str, Any]:
    digest = hashlib.sha256(f"{query}|{rank}".encode()).digest()
    title = " ".join(WORDS[b % len(WORDS)] for b in digest[:3]).title()
    text = " ".join(WORDS[(digest[i % 32] + i) % len(WORDS)] for i in range(words))
    return {"id": str(int.from_bytes(digest[:4], "big")), "contents": f'"{title}"\n{text}'}


def _results(query: str, topk: int, words: int, scores: bool) -> list[dict[str, Any]]:
    documents = [_document(query, rank, words) for rank in range(topk)]
    if not scores:
        return documents
    return [{"document": d, "score": round(0.9 - 0.05 * rank, 4)} for rank, d in enumerate(documents)]


def _unprocessable(loc: str, message: str, value: Any) -> web.Response:
    # The shape FastAPI/pydantic v2 give a request-validation error.
    detail = [{"type": "missing" if value is None else "list_type", "loc": ["body", loc], "msg": message}]
    detail[0]["input"] = value
    return web.json_response({"detail": detail}, status=422)


async def retrieve(request: web.Request) -> web.Response:
    counters, config = request.app[COUNTERS], request.app[CONFIG]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        counters.errors += 1
        return web.json_response({"detail": [{"type": "json_invalid", "loc": ["body"]}]}, status=422)
    queries = body.get("queries") if isinstance(body, dict) else None
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        counters.errors += 1
        return _unprocessable(
            "queries", "Field required" if queries is None else "Input should be a valid list", queries
        )
    counters.requests += 1
    counters.queries += len(queries)
    if config.latency > 0:
        await asyncio.sleep(config.latency)
    topk, scores = int(body.get("topk") or 3), bool(body.get("return_scores"))
    return web.json_response({"result": [_results(q, topk, config.passage_words, scores) for q in queries]})


async def metrics(request: web.Request) -> web.Response:
    return web.json_response(vars(request.app[COUNTERS]))


def make_app(config: RetrievalConfig) -> web.Application:
    app = web.Application()
    app[CONFIG], app[COUNTERS] = config, Counters()
    app.router.add_post("/retrieve", retrieve)
    app.router.add_get("/metrics", metrics)
    return app


async def start(config: RetrievalConfig, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve in the running loop; returns the runner (call `cleanup()`) and the bound port."""
    runner = web.AppRunner(make_app(config), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096).start()
    return runner, runner.addresses[0][1]


async def serve(config: RetrievalConfig, host: str, port: int) -> None:
    runner, bound = await start(config, host, port)
    # The benchmark driver reads this line to learn the port.
    print(f"sim_retrieval listening on http://{host}:{bound}/retrieve", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    p.add_argument("--latency", type=float, default=0.02, help="seconds per request")
    p.add_argument("--passage-words", type=int, default=90)
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(RetrievalConfig(args.latency, args.passage_words), args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
