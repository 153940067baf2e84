"""The teacher: chat completions on one or more vLLM OpenAI-compatible endpoints.

The request path reads as a ladder: `chat -> with_retries -> send -> Edge.send`. The requests go over
the HTTP edge (hfdistill/edge.py: one aiohttp session per teacher, per event loop), which names every
fault; this module adds what only a teacher needs: routing over the endpoint pool, vLLM's
`priority`, and the watchdog that tells a stopped server from a long generation. Not through the
openai SDK: `create()` re-validates the whole history on every call (quadratic over a rollout), and
even its HTTP client (httpx over aiohttp) cost 0.2 ms of CPU per call, a quarter of the client's
whole cost (`benchmarks/bench_throughput.py --only cpu`). The body is assembled from messages
serialised once each, so a turn costs one JSON encoding of what is new.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from hfdistill.core.config import DistillConfig
from hfdistill.core.errors import ContextLengthError, ServiceError, TeacherError
from hfdistill.core.retry import with_retries
from hfdistill.core.types import TeacherReply
from hfdistill.edge import Edge, Refuse
from hfdistill.teacher.lifecycle import GONE, RESTARTING, UP, ServerStates
from hfdistill.teacher.pool import Endpoint, EndpointPool, Route
from hfdistill.teacher.replies import refusal, reply_of
from hfdistill.teacher.served import Served

__all__ = ["Teacher", "TeacherStats"]

log = logging.getLogger(__name__)

# vLLM tries stop strings in list order: the longer one first, or "<tool_response>" always wins and the
# newline the model wrote before it stays at the end of the turn.
STOP = ["\n<tool_response>", "<tool_response>"]
_STALL_PROBES = 2  # failed health probes in a row after which an endpoint's open requests are failed
_DOWN_CAUSES = frozenset(f"teacher_{f}" for f in ("connection", "timeout", "stalled", "payload"))
_RESTART_POLL = 0.5  # seconds between looks at a server being restarted, while a turn waits for it
# How long a failed request to a server hfdistill runs waits to learn whether the server died (its launcher
# hears of a death within milliseconds; the request may hear first).
_DEATH_NOTICE = 2.0


@dataclass
class TeacherStats:
    """Counters the progress line and the summary read (shared by the teachers of every loop)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    by_endpoint: dict[str, int] = field(default_factory=dict)


class Teacher:
    """Chat completions for the rollout loop, in the native or the text tool-call protocol."""

    def __init__(self, config: DistillConfig, tools: list[dict[str, Any]], stats: TeacherStats | None = None,
                 served: Served | None = None, *, states: ServerStates | None = None,
                 near: Collection[str] = ()) -> None:
        """`states`: the servers hfdistill runs (restarted when they die); `near`: the URLs to prefer (a Ray
        actor's own node's)."""
        self.config = config
        self.tools = tools
        self.served = served if served is not None else Served.asked(config)  # shared with the distiller
        self.stats = stats if stats is not None else TeacherStats()
        self.pool = EndpointPool([Endpoint.at(url) for url in config.endpoints], states, near)
        for endpoint in self.pool.endpoints:
            endpoint.priority = endpoint.url not in self.served.no_priority
        self.edge = Edge(config.retry, headers={"Authorization": f"Bearer {config.api_key}",
                                                "Content-Type": "application/json"})
        self._parse = functools.partial(reply_of, max_tokens=config.max_tokens)
        self._params: tuple[tuple[str | None, str | None], bytes] | None = None

    @property
    def closed(self) -> bool:
        return self.edge.closed

    @property
    def model(self) -> str | None:
        return self.served.model

    @model.setter
    def model(self, value: str | None) -> None:
        self.served.model = value

    @property
    def mode(self) -> str | None:
        """The tool-call protocol: "native", "text", or None until `prepare` settles auto."""
        return self.served.protocol

    @mode.setter
    def mode(self, value: str | None) -> None:
        self.served.protocol = value

    @property
    def in_flight(self) -> int:
        return sum(e.outstanding for e in self.pool.endpoints)

    async def aclose(self) -> None:
        for endpoint in self.pool.endpoints:
            if endpoint.watchdog is not None:
                endpoint.watchdog.cancel()
        await self.edge.aclose()

    async def prepare(self) -> None:
        """Check every endpoint answers, learn the model id, and settle the protocol and priorities."""
        from hfdistill.teacher.startup import prepare  # (it drives this class)

        await prepare(self)

    def send_no_priority(self, endpoint: Endpoint) -> None:
        if endpoint.priority:
            log.info("teacher %s does not take request priorities (vLLM --scheduling-policy fcfs, or an endpoint "
                     "that refuses the field); sending it none", endpoint.url)
        endpoint.priority = False
        self.served.no_priority.add(endpoint.url)  # for the teachers of other event loops, and of workers

    # ------------------------------------------------------------ the hot path

    async def chat(self, messages: list[dict[str, Any]], route: Route) -> TeacherReply:
        """One assistant turn for `messages`; raises ContextLengthError when they no longer fit."""
        params, history = self._request_params(), route.messages_json(messages)
        # Continuing conversations first: with vLLM's --scheduling-policy priority the lowest value is
        # served first, so turn n (priority 1 - n) never queues behind new conversations (turn 1, 0).
        priority = 0 if self.config.priority == "off" else -sum(m.get("role") == "assistant" for m in messages)

        def body(with_priority: bool) -> bytes:
            extra = b',"priority":%d' % priority if with_priority else b""
            return b"".join((params, extra, b',"messages":[', history, b"]}"))

        async def attempt(n: int) -> TeacherReply:
            if n > 1:
                self.stats.retries += 1
            while True:
                endpoint = self.pool.pick(route)
                if self.pool.states is not None and self.pool.state(endpoint) not in (None, UP):
                    endpoint = await self._restarted(route)
                with_priority = bool(priority) and endpoint.priority
                try:
                    reply = await self.send(endpoint, body(with_priority))
                except TeacherError as e:
                    if with_priority and self._refused_priority(e):
                        reply = await self.send(endpoint, body(False))  # the same turn without it: the server's answer
                        self.send_no_priority(endpoint)
                        self._count(endpoint, reply)
                        return reply
                    if e.transient and await self._died(endpoint):
                        continue  # not this turn's failure: it goes again, elsewhere or once the server is back
                    if e.cause in _DOWN_CAUSES:
                        self.pool.mark_down(endpoint)
                    raise
                self._count(endpoint, reply)
                return reply

        return await with_retries(attempt, self.config.retry, what="teacher")

    async def _restarted(self, route: Route) -> Endpoint:
        """No server is up for this turn: wait while the chosen one is restarted (a turn waiting for a restart
        spends none of its retries); a given-up one fails the turn for good."""
        endpoint = self.pool.pick(route)
        while self.pool.state(endpoint) == RESTARTING:
            await asyncio.sleep(_RESTART_POLL)
            endpoint = self.pool.pick(route)
        if self.pool.state(endpoint) == GONE:
            reason = self.pool.states.reason(endpoint.url) if self.pool.states is not None else ""
            raise endpoint.server.fail("gone", f"teacher {endpoint.url} is gone: {reason}", transient=False)
        return endpoint

    async def _died(self, endpoint: Endpoint) -> bool:
        """Whether a failed request's server (one hfdistill runs) died: its launcher marks it within moments."""
        if self.pool.state(endpoint) is None:
            return False
        deadline = time.monotonic() + _DEATH_NOTICE
        while self.pool.state(endpoint) == UP and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.pool.state(endpoint) != UP

    def _refused_priority(self, e: TeacherError) -> bool:
        """Whether a final refusal may be of the `priority` field (a server restarted with vLLM's fcfs policy
        since the start-up probe, say), so that the same request without it is worth one try."""
        return self.config.priority == "auto" and not e.transient and not isinstance(e, ContextLengthError)

    def _request_params(self) -> bytes:
        """Everything of a request but the messages, as the start of a JSON object (cached)."""
        key = (self.model, self.mode)
        if self._params is None or self._params[0] != key:
            c = self.config
            params: dict[str, Any] = {"model": self.model, "temperature": c.temperature, "max_tokens": c.max_tokens}
            for name in ("top_p", "presence_penalty", "seed"):
                if getattr(c, name) is not None:
                    params[name] = getattr(c, name)
            if self.mode == "native":
                params["tools"] = self.tools
            # In both protocols: a model that goes on to invent the tool's result is cut there (vLLM's tool
            # parser still reads the call before it), rather than generating tokens that are thrown away.
            params["stop"] = STOP
            self._params = (key, json.dumps(params, ensure_ascii=False).encode()[:-1])
        return self._params[1]

    async def send(self, endpoint: Endpoint, body: bytes, refuse: Refuse = refusal) -> TeacherReply:
        """One chat request to one endpoint, open to the watchdog while it waits."""
        if endpoint.stalled and not await self._answers(endpoint):
            raise _stalled(endpoint)
        task = asyncio.current_task()
        assert task is not None
        endpoint.outstanding += 1
        endpoint.open[task] = time.monotonic()
        self._watch(endpoint)
        try:
            return await self.edge.send(endpoint.server, endpoint.chat_url, body, parse=self._parse, refuse=refuse)
        except asyncio.CancelledError:
            if task not in endpoint.failed_by_watchdog:
                raise
            endpoint.failed_by_watchdog.discard(task)
            if hasattr(task, "uncancel"):  # Python >= 3.11: this cancellation is handled here
                task.uncancel()
            raise _stalled(endpoint) from None
        finally:
            endpoint.outstanding -= 1
            endpoint.open.pop(task, None)

    def _count(self, endpoint: Endpoint, reply: TeacherReply) -> None:
        """Rollout calls only: the start-up probes are not the run's work."""
        self.stats.calls += 1
        self.stats.by_endpoint[endpoint.name] = self.stats.by_endpoint.get(endpoint.name, 0) + 1
        self.stats.prompt_tokens += reply.usage.prompt_tokens
        self.stats.completion_tokens += reply.usage.completion_tokens

    # ------------------------------------------------------------ the watchdog

    def _watch(self, endpoint: Endpoint) -> None:
        if endpoint.watchdog is None or endpoint.watchdog.done():
            endpoint.watchdog = asyncio.get_running_loop().create_task(self._watchdog(endpoint))

    async def _watchdog(self, endpoint: Endpoint) -> None:
        """While requests are open long, probe the server; fail them when it stopped answering.

        Generations may legitimately take as long as --request-timeout, so the requests themselves are
        not timed: a vLLM stopped with SIGTERM can keep its sockets open without ever answering, and
        only its health endpoint tells the two apart.
        """
        every = self.config.retry.stall_probe
        failures = 0
        while endpoint.open:
            await asyncio.sleep(every)
            oldest = min(endpoint.open.values(), default=time.monotonic())
            if time.monotonic() - oldest < every or await self._answers(endpoint):
                failures = 0
                endpoint.stalled = False
                continue
            failures += 1
            if failures >= _STALL_PROBES:
                log.warning("teacher %s stopped answering (%d health probes failed); failing its %d open "
                            "requests", endpoint.url, failures, len(endpoint.open))
                endpoint.stalled = True
                self.pool.mark_down(endpoint)
                for task in list(endpoint.open):
                    endpoint.failed_by_watchdog.add(task)
                    task.cancel()
                failures = 0

    async def _answers(self, endpoint: Endpoint) -> bool:
        """Whether the server answers `GET /v1/models` (any HTTP status) within the probe interval."""
        if await self.edge.health(endpoint.models_url, timeout=self.config.retry.stall_probe) is None:
            return False
        endpoint.stalled = False
        return True


def _stalled(endpoint: Endpoint) -> ServiceError:
    return endpoint.server.fail("stalled", f"teacher {endpoint.url} stopped answering (its /v1/models health "
                                "probe fails)")
