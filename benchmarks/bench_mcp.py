"""Client CPU per tool call: an MCP tool over stdio, the same tool over streamable HTTP, and a search. A benchmark.

Streamable HTTP runs twice: against a server answering each call with an event stream (the SDK's default),
and against one answering JSON (`json_response=True`), since the client's cost differs (see the results).

Each call goes through hfdistill's own path, as a rollout makes it: the tool's arguments checked (an MCP
tool's against its JSON schema), the call through the run's `ToolContext` (an MCP session kept open per
server, or the retrieval client through the HTTP edge), the observation rendered from its template. The
servers are separate processes (tests/mcp_servers.py for MCP, `hfdistill serve-retriever` with BM25 over a
small corpus for search), so the CPU measured, `time.process_time()` of this process, is the client's alone.
The three run side by side in one invocation, interleaved in rounds, at each concurrency.

    python benchmarks/bench_mcp.py                                   # 2,000 calls each, concurrency 1 and 16
    python benchmarks/bench_mcp.py --calls 5000 --concurrency 1,64 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
from hfdistill.core.config import DistillConfig  # noqa: E402
from hfdistill.core.prompts import Prompts  # noqa: E402
from hfdistill.core.retry import RetryPolicy  # noqa: E402
from hfdistill.core.templates import Templates  # noqa: E402
from hfdistill.core.tools import Tool, ToolContext  # noqa: E402
from hfdistill.core.toolspec import McpServerSpec, ToolOptions  # noqa: E402
from hfdistill.retrieval.http import HttpRetriever  # noqa: E402
from hfdistill.tools.mcp import discover, open_sessions  # noqa: E402
from hfdistill.tools.toolset import offered_tools  # noqa: E402
from tests.corpus_util import write_jsonl  # noqa: E402
from tests.mcp_servers import CORPUS, McpHttpServer, free_port, stdio_command  # noqa: E402

POLICY = RetryPolicy(attempts=3, backoff=0.1, timeout=30.0)


@dataclass
class Result:
    tool: str
    concurrency: int
    calls: int
    cpu_s: float
    wall_s: float

    @property
    def cpu_us_per_call(self) -> float:
        return 1e6 * self.cpu_s / self.calls

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.wall_s


def _retrieval_server(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    corpus = write_jsonl(work / "corpus.jsonl", [{"id": d["id"], "contents": f'"{d["title"]}"\n{d["text"]}'}
                                                 for d in CORPUS])
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hfdistill", "serve-retriever", "--corpus", str(corpus), "--port",
                             str(port), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"http://127.0.0.1:{port}/retrieve"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the retrieval server did not start")


async def _measure(tool: Tool, raw: dict[str, Any], context: ToolContext, calls: int, concurrency: int) -> Result:
    async def worker(n: int) -> None:
        for _ in range(n):
            await tool(tool.arguments(raw), context)

    shares = [calls // concurrency + (i < calls % concurrency) for i in range(concurrency)]
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(n) for n in shares))
    return Result(tool.name, concurrency, calls, time.process_time() - cpu, time.perf_counter() - wall)


async def run(args: argparse.Namespace, stdio: str, http_urls: list[str], retrieval_url: str) -> list[Result]:
    specs = (McpServerSpec.stdio(stdio), *(McpServerSpec(url=url) for url in http_urls))
    options = ToolOptions(mcp=specs, mcp_timeout=30.0, mcp_concurrency=max(args.concurrency))
    servers = await asyncio.to_thread(discover, options, POLICY)
    config = DistillConfig(retrieval_url=retrieval_url, tools=options)
    tools = {t.name: t for t in offered_tools(config, servers)}
    prompts = Prompts.build(Templates(tool_templates=("mcp_observation.j2",)), list(tools.values()))
    retriever = HttpRetriever(retrieval_url, POLICY)
    sessions = open_sessions(servers, options, POLICY)
    context = ToolContext(search=lambda queries: retriever.search(queries, 3), render=prompts.render,
                          servers=sessions)
    cases = [("calc_search", {"query": "Seine Paris"}), ("web_search", {"query": "Seine Paris"}),
             ("json_search", {"query": "Seine Paris"}), ("search", {"query_list": ["Seine Paris"]})]
    results: list[Result] = []
    try:
        for name, raw in cases:  # warm up: sessions open, connections pooled, templates compiled
            await _measure(tools[name], raw, context, 50, 1)
        for concurrency in args.concurrency:
            rounds: dict[str, list[Result]] = {name: [] for name, _ in cases}
            for _ in range(args.rounds):  # interleaved, so the machine's noise falls on all three alike
                for name, raw in cases:
                    rounds[name].append(await _measure(tools[name], raw, context, args.calls // args.rounds,
                                                       concurrency))
            results += [Result(name, concurrency, sum(r.calls for r in rs), sum(r.cpu_s for r in rs),
                               sum(r.wall_s for r in rs)) for name, rs in rounds.items()]
    finally:
        await asyncio.gather(*(s.aclose() for s in sessions.values()))
        await retriever.aclose()
    return results


LABELS = {"calc_search": "MCP tool, stdio", "web_search": "MCP tool, streamable HTTP (the SDK's default: an event "
                                                        "stream per call)",
          "json_search": "MCP tool, streamable HTTP (a server that answers JSON: `json_response=True`)",
          "search": "search (retrieval server over HTTP)"}


def render(results: list[Result]) -> str:
    lines = ["| call | concurrency | client CPU per call | calls/s (wall) |", "|---|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {LABELS[r.tool]} | {r.concurrency} | {r.cpu_us_per_call:,.0f} µs | {r.calls_per_s:,.0f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=2000, help="calls per tool and concurrency")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds the calls are split into")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16],
                   help="comma-separated concurrencies (default 1,16)")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
        work = Path(tmp)
        http = [McpHttpServer("web").start(), McpHttpServer("json", json_response=True).start()]
        retrieval, retrieval_url = _retrieval_server(work)
        try:
            results = asyncio.run(run(args, stdio_command("calc"), [h.url for h in http], retrieval_url))
        finally:
            for server in http:
                server.kill()
            retrieval.terminate()
            retrieval.wait(10)
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "results": [{**r.__dict__, "cpu_us_per_call": round(r.cpu_us_per_call, 1),
                                                      "calls_per_s": round(r.calls_per_s, 1)} for r in results]},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
