"""Several teacher endpoints as one pool: least-outstanding-requests routing, a rollout sticking to
its endpoint (so vLLM's prefix cache serves its growing conversation), a cool-down for one that failed.

Servers hfdistill runs itself have a state (`lifecycle.ServerStates`): one being restarted or given up takes
no turn while another is up. A Ray actor prefers the servers of its own node (`near`): the others are used
only while none of those is up."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import yarl

from hfdistill.core.errors import TeacherError
from hfdistill.edge import Server
from hfdistill.teacher.lifecycle import GONE, RESTARTING, UP, ServerStates

__all__ = ["Endpoint", "EndpointPool", "Route"]

log = logging.getLogger(__name__)
_DOWN_SECONDS = 30.0  # an endpoint that fails at the connection level sits out this long


@dataclass(eq=False)
class Endpoint:
    """One vLLM server: its client, requests in flight, and when it may be used again."""

    url: str  # the server's /v1
    chat_url: yarl.URL  # parsed once: aiohttp would parse a string on every request
    models_url: yarl.URL
    name: str  # host:port, for statistics (never credentials)
    server: Server  # as the HTTP edge names it in causes and messages (and its rate-limit gate)
    outstanding: int = 0
    down_until: float = 0.0
    priority: bool = True  # takes vLLM's `priority` field (--priority auto learns otherwise from a refusal)
    # Requests waiting for an answer: the task awaiting each, and when it was sent (for the watchdog).
    open: dict[asyncio.Task[Any], float] = field(default_factory=dict)
    failed_by_watchdog: set[asyncio.Task[Any]] = field(default_factory=set)
    watchdog: asyncio.Task[None] | None = None
    stalled: bool = False  # its last health probes failed; new requests probe it before being sent
    near: bool = False  # on this Ray actor's node: preferred

    @classmethod
    def at(cls, url: str) -> Endpoint:
        base = yarl.URL(url)
        name = f"{base.host}:{base.explicit_port}" if base.explicit_port else str(base.host)
        server = Server("teacher", url, TeacherError,
                        fix="start vLLM (vllm serve <model>) or fix VLLM_URL / --vllm_url")
        return cls(url, base / "chat/completions", base / "models", name, server)

    def healthy(self, now: float) -> bool:
        return self.down_until <= now


@dataclass
class Route:
    """Per-rollout state: the endpoint it sticks to (so its prefix cache is reused) and its
    messages serialised so far (a conversation only grows, so each message is encoded once)."""

    endpoint: Endpoint | None = None
    encoded: list[bytes] = field(default_factory=list)

    def messages_json(self, messages: list[dict[str, Any]]) -> bytes:
        for message in messages[len(self.encoded):]:
            self.encoded.append(orjson.dumps(message))
        return b",".join(self.encoded)


class EndpointPool:
    """Least-outstanding-requests routing with stickiness, a cool-down for failed endpoints, the managed servers'
    states, and a preference for near ones."""

    def __init__(self, endpoints: Sequence[Endpoint], states: ServerStates | None = None,
                 near: Collection[str] = ()) -> None:
        self.endpoints = list(endpoints)
        self.states = states
        for endpoint in self.endpoints:
            endpoint.near = endpoint.url in near

    def state(self, endpoint: Endpoint) -> str | None:
        """UP, RESTARTING or GONE for a server hfdistill runs; None for one it does not."""
        return self.states.state(endpoint.url) if self.states is not None else None

    def _usable(self, endpoint: Endpoint, now: float) -> bool:
        return endpoint.healthy(now) and self.state(endpoint) in (None, UP)

    def pick(self, route: Route) -> Endpoint:
        now = time.monotonic()
        current = route.endpoint
        if current is not None and self._usable(current, now):
            return current
        usable = [e for e in self.endpoints if self._usable(e, now)]
        candidates = [e for e in usable if e.near] or usable
        if not candidates:
            # None is usable: one being restarted (its turns wait for it), else the one whose cool-down ends
            # first (a given-up one only when every one is given up: its turns fail).
            restarting = [e for e in self.endpoints if self.state(e) == RESTARTING]
            alive = [e for e in self.endpoints if self.state(e) != GONE] or self.endpoints
            candidates = restarting or [min(alive, key=lambda e: e.down_until)]
        chosen = min(candidates, key=lambda e: e.outstanding)
        route.endpoint = chosen
        return chosen

    def mark_down(self, endpoint: Endpoint) -> None:
        if len(self.endpoints) > 1:
            endpoint.down_until = time.monotonic() + _DOWN_SECONDS
            log.warning("teacher %s failed; taking it out of rotation for %.0fs", endpoint.url, _DOWN_SECONDS)
