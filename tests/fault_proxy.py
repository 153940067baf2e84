"""A fault-injecting HTTP proxy on loopback, in front of a real server (the scripted teacher, hfdistill's own
BM25 retrieval server, the scripted judge): it forwards each request and breaks a share of them the way real
servers and networks do.

    reset        the connection is reset (TCP RST) before any reply
    cut          the real reply's headers and half its body, then a reset (a server that crashed mid-reply)
    hang         nothing, for longer than the client waits
    throttle     429 with Retry-After (a hosted endpoint's rate limit)
    html_5xx     502 with a proxy's HTML error page
    html_200     200 with an HTML page (a captive portal, a misrouted URL)
    wrong_shape  200 with JSON of the wrong shape

A share `rate` of the requests is broken, evenly spaced (at 8 %: the 13th, the 25th, the 38th, ...), by
each kind in turn, so a run sees the same number of each kind every time; the same request (method, path
and body) is broken at most `per_request` times, so a client's retries get through (`per_request=None`
and `rate=1`: a server that answers nothing but faults). `only` limits the faults to requests whose body
holds those bytes.
"""

from __future__ import annotations

import asyncio
import math
import socket
import struct
from collections import Counter
from collections.abc import Sequence

import aiohttp
from aiohttp import web

from tests.fakes import Served

__all__ = ["KINDS", "FaultProxy"]

KINDS = ("reset", "cut", "hang", "throttle", "html_5xx", "html_200", "wrong_shape")
HTML_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
            b"</center>\r\n<hr><center>nginx/1.24.0</center>\r\n</body>\r\n</html>\r\n")
HTML_200 = b"<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head><body>It works.</body></html>\n"
WRONG_SHAPE = b'{"object": "unexpected", "items": [1, 2, 3]}'
RATE_LIMITED = b'{"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit"}}'
_FORWARDED = ("Content-Type", "Authorization")


class FaultProxy:
    """The proxy's app and what it did: `injected` counts faults by kind, `forwarded` the requests let through."""

    def __init__(self, upstream: str, kinds: Sequence[str] = KINDS, *, rate: float = 1.0,
                 per_request: int | None = 1, only: bytes | None = None, hang: float = 30.0,
                 retry_after: str = "1") -> None:
        unknown = set(kinds) - set(KINDS)
        assert not unknown, f"unknown fault kinds {unknown}"
        self.upstream = upstream.rstrip("/")
        self.kinds = tuple(kinds)
        self.rate = rate
        self.per_request = per_request
        self.only = only
        self.hang = hang
        self.retry_after = retry_after
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self._seen = 0  # requests eligible for a fault so far
        self._broken: Counter[tuple[str, str, bytes]] = Counter()
        self._session: aiohttp.ClientSession | None = None

    def serve(self) -> Served:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_cleanup.append(self._close)
        return Served(app)

    def _fault_for(self, key: tuple[str, str, bytes]) -> str | None:
        if not self.kinds or (self.only is not None and self.only not in key[2]):
            return None
        self._seen += 1
        if math.floor(self._seen * self.rate) == math.floor((self._seen - 1) * self.rate):
            return None
        if self.per_request is not None and self._broken[key] >= self.per_request:
            return None
        self._broken[key] += 1
        kind = self.kinds[sum(self.injected.values()) % len(self.kinds)]
        self.injected[kind] += 1
        return kind

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = self._fault_for((request.method, request.path_qs, body))
        if fault == "reset":
            _reset(request)
            return web.Response()  # never sent: the connection is gone
        if fault == "hang":
            await asyncio.sleep(self.hang)
            _reset(request)
            return web.Response()
        if fault == "throttle":
            return web.Response(status=429, body=RATE_LIMITED, content_type="application/json",
                                headers={"Retry-After": self.retry_after})
        if fault == "html_5xx":
            return web.Response(status=502, body=HTML_502, content_type="text/html")
        if fault == "html_200":
            return web.Response(status=200, body=HTML_200, content_type="text/html")
        if fault == "wrong_shape":
            return web.Response(status=200, body=WRONG_SHAPE, content_type="application/json")
        status, headers, payload = await self._forward(request, body)
        if fault == "cut":
            return await _cut(request, status, headers, payload)
        self.forwarded += 1
        return web.Response(status=status, body=payload, headers=headers)

    async def _forward(self, request: web.Request, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        headers = {k: request.headers[k] for k in _FORWARDED if k in request.headers}
        async with self._session.request(request.method, self.upstream + request.path_qs, data=body or None,
                                         headers=headers) as upstream:
            payload = await upstream.read()
            kept = {k: upstream.headers[k] for k in ("Content-Type", "Retry-After") if k in upstream.headers}
            return upstream.status, kept, payload

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()


async def _cut(request: web.Request, status: int, headers: dict[str, str], payload: bytes) -> web.StreamResponse:
    """The reply's headers promise the whole body; half of it comes, then the connection is reset."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = len(payload)
    await response.prepare(request)
    await response.write(payload[: len(payload) // 2])
    await asyncio.sleep(0.01)  # let the half reach the client before the reset
    _reset(request)
    return response


def _reset(request: web.Request) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed server or a resetting middlebox does."""
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
