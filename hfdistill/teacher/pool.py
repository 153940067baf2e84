"""Several teacher endpoints as one pool: least-outstanding-requests routing, a rollout sticking to
its endpoint (so vLLM's prefix cache serves its growing conversation), a cool-down for one that failed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import yarl

from hfdistill.core.errors import TeacherError
from hfdistill.edge import Server

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
    """Least-outstanding-requests routing with stickiness and a cool-down for failed endpoints."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = list(endpoints)

    def pick(self, route: Route) -> Endpoint:
        now = time.monotonic()
        current = route.endpoint
        if current is not None and current.healthy(now):
            return current
        healthy = [e for e in self.endpoints if e.healthy(now)]
        # When every endpoint is cooling down, use the one that comes back first.
        candidates = healthy or [min(self.endpoints, key=lambda e: e.down_until)]
        chosen = min(candidates, key=lambda e: e.outstanding)
        route.endpoint = chosen
        return chosen

    def mark_down(self, endpoint: Endpoint) -> None:
        if len(self.endpoints) > 1:
            endpoint.down_until = time.monotonic() + _DOWN_SECONDS
            log.warning("teacher %s failed; taking it out of rotation for %.0fs", endpoint.url, _DOWN_SECONDS)
