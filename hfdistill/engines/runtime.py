"""The clients a `Distiller` runs with: per event loop, a teacher, a retriever, a judge, a session with each
MCP server whose tools are offered, and the window.

Each `Dataset.map` call runs its own event loop, and an HTTP client belongs to the loop it was made
in, so clients are made lazily inside the loop that uses them. The servers are probed once per
distiller (the first loop to start does it), and what they serve is kept in one shared `Served`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hfdistill.core.config import DistillConfig
from hfdistill.core.tools import ToolContext
from hfdistill.judge.client import Judge, JudgeStats
from hfdistill.judge.prompt import parse_verdict
from hfdistill.retrieval.http import HttpRetriever
from hfdistill.retrieval.protocol import EmbeddedRetriever, Retriever
from hfdistill.teacher.client import Teacher, TeacherStats
from hfdistill.teacher.lifecycle import ServerStates
from hfdistill.teacher.served import Served

if TYPE_CHECKING:
    from hfdistill.tools.mcp import McpServerTools
    from hfdistill.tools.mcp_session import McpSession

__all__ = ["Clients", "Runtime", "batch_budget"]

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Clients and the window of one event loop."""

    loop: asyncio.AbstractEventLoop
    teacher: Teacher
    retriever: Retriever
    window: asyncio.Semaphore
    lock: asyncio.Lock
    tools: ToolContext
    admission: asyncio.Semaphore | None = None  # sized from the first batch (see Distiller.map_batch)
    judge: Judge | None = None
    sessions: dict[str, McpSession] = field(default_factory=dict)  # by server label (also in `tools.servers`)

    async def aclose(self) -> None:
        await self.teacher.aclose()
        await self.retriever.aclose()
        if self.judge is not None:
            await self.judge.aclose()
        await asyncio.gather(*(s.aclose() for s in self.sessions.values()))


def batch_budget(window: int, rollouts_per_batch: int) -> int:
    """Batches worked on at once: enough to fill the window four times over, no more.

    Each admitted batch holds its input rows as Python objects (and, once done but not yet
    written in order, its output); batches beyond what the window can use would only cost memory
    growing with the input. Four times the window leaves room for batches that wait on one slow
    rollout while the window stays full: no barrier between batches.
    """
    return max(8, 4 * -(-window // max(rollouts_per_batch, 1)))


class Clients:
    """The runtimes of every loop a distiller runs in, the embedded retriever they share, and the probe."""

    def __init__(self, config: DistillConfig, tools: list[dict[str, Any]], render: Any, *, judged: bool,
                 servers: Sequence[McpServerTools] = (), search: bool = True, opens: bool = False) -> None:
        self.config = config
        self.tools = tools
        self.render = render  # the observation renderer the search tool uses
        self.judged = judged
        self.servers = list(servers)  # the MCP servers whose tools are offered
        self.search, self.opens = search, opens  # whether search (so the retriever) and open are offered
        self.served = Served.asked(config)
        self.teacher_stats = TeacherStats()  # shared by the teachers of every loop
        self.judge_stats = JudgeStats()
        self.prepared = False  # the servers were probed (once, not per loop)
        self.states: ServerStates | None = None  # the teacher servers hfdistill runs (None: the user's)
        self.near: frozenset[str] = frozenset()  # teacher URLs to prefer (a Ray actor's own node's)
        self._runtimes: list[Runtime] = []
        self._embedded: EmbeddedRetriever | None = None

    def new_judge(self) -> Judge | None:
        """A judge client for the running event loop (None without --judge-url)."""
        if self.config.judge is None or not self.judged:
            return None
        return Judge(self.config.judge, self.config.retry, parse_verdict, self.judge_stats, self.served)

    def retriever(self) -> Retriever:
        if self.config.corpus is None:
            return HttpRetriever(self.config.retrieval_url, self.config.retry)
        return self.embedded()

    def embedded(self) -> EmbeddedRetriever:
        """The in-process retriever every loop shares (so concurrent rollouts' searches batch together)."""
        if self._embedded is None:
            from hfdistill.retrieval.embedded import open_embedded

            c = self.config
            self._embedded = open_embedded(c.corpus or "", c.retriever, index_dir=c.index_dir, dense=c.dense)
        return self._embedded

    async def get(self) -> Runtime:
        """This loop's runtime, made on first use; the first one probes the servers."""
        loop = asyncio.get_running_loop()
        runtime = next((r for r in self._runtimes if r.loop is loop), None)
        if runtime is None:
            retriever = self.retriever()  # first: loading a corpus index may fail, and owns no socket
            teacher = Teacher(self.config, self.tools, self.teacher_stats, self.served, states=self.states,
                              near=self.near)
            topk = self.config.topk
            sessions = self._sessions()
            opener = self.embedded().documents().open if self.opens else None  # (the first loop builds its tables)
            tools = ToolContext(search=lambda queries: retriever.search(queries, topk), render=self.render,
                                open=opener, servers=sessions)
            runtime = Runtime(loop, teacher, retriever, asyncio.Semaphore(self.config.window), asyncio.Lock(), tools,
                              judge=self.new_judge(), sessions=sessions)
            self._runtimes.append(runtime)
        if not self.prepared:
            async with runtime.lock:
                if not self.prepared:
                    await self._probe(runtime)
        return runtime

    def _sessions(self) -> dict[str, McpSession]:
        if not self.servers:
            return {}
        from hfdistill.tools.mcp import open_sessions

        return open_sessions(self.servers, self.config.tools, self.config.retry)

    async def _probe(self, runtime: Runtime) -> None:
        """Before the first rollout: every endpoint answers, model and protocol are known, and the
        retrieval server speaks Search-R1. A failure here stops the run before any row."""
        await runtime.teacher.prepare()
        if isinstance(runtime.retriever, HttpRetriever) and self.search:  # (not asked unless search is offered)
            await runtime.retriever.probe()
        if runtime.judge is not None:
            await runtime.judge.prepare()
        self.prepared = True
        log.info("teacher %s (%s protocol) at %d endpoint(s); %d rollouts in flight at most", self.served.model,
                 self.served.protocol, len(self.config.endpoints), self.config.window)

    def prepare(self) -> None:
        """Probe the servers now, outside any `map`, and close the clients that did it."""
        async def probe() -> None:
            try:
                await self.get()
            finally:
                await self.aclose()

        asyncio.run(probe())

    async def aclose(self) -> None:
        """Close the clients of the running loop (before it ends: a closed loop cannot close them)."""
        loop = asyncio.get_running_loop()
        for runtime in [r for r in self._runtimes if r.loop is loop]:
            self._runtimes.remove(runtime)
            await runtime.aclose()

    def loops(self) -> list[asyncio.AbstractEventLoop]:
        """The event loops these clients run in."""
        return [r.loop for r in self._runtimes]

    @property
    def has_runtimes(self) -> bool:
        return bool(self._runtimes)

    @property
    def in_flight(self) -> int:
        return sum(r.teacher.in_flight for r in self._runtimes)

    def close(self) -> None:
        """Close the clients of every loop (idempotent)."""
        while self._runtimes:
            runtime = self._runtimes.pop()
            if runtime.loop.is_closed():
                continue
            if runtime.loop.is_running():
                runtime.loop.create_task(runtime.aclose())
            else:
                runtime.loop.run_until_complete(runtime.aclose())
