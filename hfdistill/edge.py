"""The one HTTP edge: every client's requests go through here, and only here are aiohttp's, asyncio's,
the OS's and JSON's faults known. Each becomes a `ServiceError` of the server's own kind, with a
`cause` that names the server and the fault:

    <kind>_connection    refused, reset or dropped before the reply began
    <kind>_timeout       no complete reply within the request's timeout
    <kind>_payload       the reply was cut short (the server crashed mid-reply; a proxy reset it)
    <kind>_protocol      the reply is not HTTP
    <kind>_http_<n>      HTTP status n (429 is the server's rate limit: `throttled`, Retry-After kept)
    <kind>_bad_response  a 2xx whose body the caller's parser refused (not JSON, or not its shape)

Every fault but a final status (a 4xx other than 408, 425 and 429, or a refusal the caller names)
is transient: `Edge.call` retries it with the run's `RetryPolicy` (core/retry.py), where a 429 waits
without spending the retries, and what still fails names the server's URL. The caller keeps the
meaning of a refusal (`refuse`: the teacher knows vLLM's context-length 400, the retrieval client
what a 404 on vLLM's port means); the edge owns everything else.

The transport is aiohttp, and only `fault_of` knows its exceptions. MCP servers are reached through the
MCP SDK, whose streamable HTTP transport runs on httpx2: the edge makes that client (`mcp_http_client`)
and `fault_of` knows httpx2's, anyio's and the SDK's transport exceptions too (an exception group's
first fault among them), so an MCP server's faults read, count and retry as every other server's do:

    <kind>_connection    as above, and: a session the server closed or broke (the SDK's "Connection
                         closed"), a stdio server that exited or cannot be started
    <kind>_timeout       as above, and the SDK's request timeout
    <kind>_error         a JSON-RPC error the server answered (its handler failed)

A server's health (a launcher waiting for vLLM, the teacher's watchdog) is `Edge.health`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import yarl

from hfdistill.core.errors import ServiceError
from hfdistill.core.retry import RetryPolicy, is_transient, parse_retry_after, with_retries

if TYPE_CHECKING:
    import httpx2

__all__ = ["Edge", "Refuse", "Server", "bad_reply", "excerpt", "fault_of", "mcp_http_client", "server_words",
           "status_fault"]

# The MCP SDK's JSON-RPC error codes for a session that ended and for its own request timeout (mcp_types).
_MCP_CONNECTION_CLOSED, _MCP_REQUEST_TIMEOUT = -32000, -32001

T = TypeVar("T")
# The caller's reading of a non-2xx status: (server, status, body, Retry-After) -> its own error, or None
# for the edge's (429 throttled, 408/425/5xx transient, any other status final).
Refuse = Callable[["Server", int, bytes, "str | None"], "ServiceError | None"]
URL = yarl.URL | str


@dataclass(eq=False)
class Server:
    """One server as the edge names it: its kind (the cause prefix and the error raised), its URL
    (named in every message), what to do when it cannot be reached, and its rate-limit gate."""

    kind: str  # "teacher", "retrieval", "judge", ...: causes read "<kind>_<fault>"
    url: str
    error: type[ServiceError] = ServiceError
    name: str = ""  # how messages call it ("retrieval server"); default: the kind
    fix: str = ""  # the hint when it cannot be reached, e.g. "start it or fix RETRIEVAL_URL"
    # Monotonic time before which no request is sent: a Retry-After holds every request to it, not
    # only the one that was told.
    resume_at: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.kind

    def fail(self, fault: str, message: str, *, transient: bool = True, retry_after: float | None = None,
             throttled: bool = False) -> ServiceError:
        return self.error(message, transient=transient, cause=f"{self.kind}_{fault}", retry_after=retry_after,
                          throttled=throttled)


def fault_of(server: Server, e: BaseException, timeout: float | None = None) -> ServiceError | None:
    """A transport's exception as the server's fault, or None when it is not one (a bug: let it rise)."""
    e = _first_fault(e)
    foreign = _mcp_fault(server, e, timeout)
    if foreign is not None:
        return foreign
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):  # before OSError: aiohttp's timeouts are both
        after = f" after {timeout:g}s" if timeout is not None else ""
        return server.fail("timeout", f"{server.name} {server.url} timed out{after}")
    if isinstance(e, aiohttp.ClientPayloadError):
        return server.fail("payload", f"{server.name} {server.url} cut its reply short ({_reason(e)})")
    if isinstance(e, aiohttp.ClientConnectorError):
        fix = f"; {server.fix}" if server.fix else ""
        return server.fail("connection", f"cannot reach the {server.name} at {server.url} ({_reason(e)}){fix}")
    if isinstance(e, (FileNotFoundError, PermissionError)):  # a server's command cannot be started (MCP stdio)
        fix = f"; {server.fix}" if server.fix else ""
        return server.fail("connection", f"cannot start the {server.name} {server.url} ({_reason(e)}){fix}",
                           transient=False)
    if isinstance(e, (aiohttp.ClientConnectionError, OSError)):
        return server.fail("connection", f"{server.name} {server.url} dropped the connection ({_reason(e)})")
    if isinstance(e, aiohttp.ClientError):  # the reply is not HTTP (ClientResponseError from the parser)
        return server.fail("protocol", f"{server.name} {server.url} answered something that is not HTTP "
                                       f"({_reason(e)})")
    return None


def _first_fault(e: BaseException) -> BaseException:
    """The exception itself, or, for an exception group (anyio's task groups raise them), its first member
    that is not itself a group: the fault that brought the others down."""
    while isinstance(getattr(e, "exceptions", None), tuple) and e.exceptions:  # type: ignore[attr-defined]
        e = e.exceptions[0]  # type: ignore[attr-defined]
    return e


def _mcp_fault(server: Server, e: BaseException, timeout: float | None) -> ServiceError | None:
    """The faults of MCP's transports: httpx2's, anyio's streams', the SDK's own. (Read from the modules
    already imported: a process that never loaded one cannot have raised its exceptions.)"""
    httpx2_ = sys.modules.get("httpx2")
    if httpx2_ is not None and isinstance(e, httpx2_.HTTPError):
        return _httpx2_fault(server, e, httpx2_, timeout)
    anyio_ = sys.modules.get("anyio")
    if anyio_ is not None and isinstance(e, (anyio_.BrokenResourceError, anyio_.ClosedResourceError,
                                             anyio_.EndOfStream)):
        return server.fail("connection", f"the session with the {server.name} {server.url} broke ({type(e).__name__})")
    errors = sys.modules.get("mcp.shared.exceptions")
    if errors is not None and isinstance(e, errors.MCPError):
        if e.code == _MCP_CONNECTION_CLOSED:
            return server.fail("connection", f"the {server.name} {server.url} closed the session ({e.message})")
        if e.code == _MCP_REQUEST_TIMEOUT:
            after = f" after {timeout:g}s" if timeout is not None else ""
            return server.fail("timeout", f"{server.name} {server.url} timed out{after}")
        words = excerpt(e.message.encode())
        return server.fail("error", f"{server.name} {server.url} answered error {e.code}: {words}")
    return None


def _httpx2_fault(server: Server, e: Any, httpx2_: Any, timeout: float | None) -> ServiceError:
    if isinstance(e, httpx2_.TimeoutException):
        after = f" after {timeout:g}s" if timeout is not None else ""
        return server.fail("timeout", f"{server.name} {server.url} timed out{after}")
    if isinstance(e, httpx2_.ConnectError):
        fix = f"; {server.fix}" if server.fix else ""
        return server.fail("connection", f"cannot reach the {server.name} at {server.url} ({_reason(e)}){fix}")
    if isinstance(e, httpx2_.NetworkError):
        return server.fail("connection", f"{server.name} {server.url} dropped the connection ({_reason(e)})")
    if isinstance(e, httpx2_.HTTPStatusError):
        response = e.response
        return status_fault(server, response.status_code, response.content if response.is_stream_consumed else b"",
                            response.headers.get("Retry-After"))
    return server.fail("protocol", f"{server.name} {server.url} answered something that is not HTTP ({_reason(e)})")


def mcp_http_client(headers: Mapping[str, str], timeout: float) -> httpx2.AsyncClient:
    """The HTTP client the MCP SDK's streamable HTTP transport sends through (its only transport
    dependency): `headers` on every request, `timeout` to connect and write; reads may wait longer (the
    server's event stream stays open between calls, and each call has its own timeout above this)."""
    import httpx2

    return httpx2.AsyncClient(headers=dict(headers), follow_redirects=False,
                              timeout=httpx2.Timeout(timeout, read=max(timeout, 300.0)))


def status_fault(server: Server, status: int, payload: bytes, retry_after: str | None) -> ServiceError:
    """The edge's reading of a non-2xx status the caller did not claim."""
    transient = is_transient(status)
    return server.fail(f"http_{status}", f"{server.name} {server.url} answered HTTP {status}: {server_words(payload)}",
                       transient=transient, retry_after=parse_retry_after(retry_after) if transient else None,
                       throttled=status == 429)


def bad_reply(server: Server, e: ValueError, payload: bytes) -> ServiceError:
    """A 2xx whose body the caller's parser refused: transient (a proxy's error page, a restarting server)."""
    return server.fail("bad_response", f"{server.name} {server.url} answered a bad reply ({excerpt(str(e).encode())}): "
                                       f"{excerpt(payload)}")


class Edge:
    """One aiohttp session (made in the event loop that first uses it) for one client's servers."""

    def __init__(self, policy: RetryPolicy, *, headers: Mapping[str, str] | None = None) -> None:
        self.policy = policy
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=policy.timeout)
        self._timeouts = {policy.timeout: self._timeout}  # made once each: a request's path is hot

    @property
    def closed(self) -> bool:
        return self._session is None or self._session.closed

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),  # the caller's window is the limit
                timeout=self._timeout, headers=self._headers)
        return self._session

    def _limit(self, timeout: float | None) -> aiohttp.ClientTimeout:
        if timeout is None:
            return self._timeout
        limit = self._timeouts.get(timeout)
        if limit is None:
            limit = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        return limit

    async def aclose(self) -> None:
        """Close the session; a later request opens another (in the event loop that sends it)."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def send(self, server: Server, url: URL, body: bytes | None = None, *, parse: Callable[[bytes], T],
                   refuse: Refuse | None = None, timeout: float | None = None) -> T:
        """One request (POST `body`, or GET without one): `parse(body)` of a 2xx reply, else a ServiceError."""
        if server.resume_at:
            await self._gate(server)
        limit = self._limit(timeout)
        try:
            async with self._get_session().request("GET" if body is None else "POST", url, data=body,
                                                   timeout=limit) as response:
                payload = await response.read()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            raise _translated(server, e, limit.total) from None
        status = response.status
        if not 200 <= status < 300:
            retry_after = response.headers.get("Retry-After")
            error = (refuse(server, status, payload, retry_after) if refuse is not None else None) \
                or status_fault(server, status, payload, retry_after)
            if error.retry_after is not None:
                server.resume_at = max(server.resume_at, time.monotonic() + self.policy.wait_for(error.retry_after))
            raise error
        try:
            return parse(payload)
        except ValueError as e:
            raise bad_reply(server, e, payload) from None

    def call(self, server: Server, url: URL, body: bytes | None = None, *, parse: Callable[[bytes], T],
             refuse: Refuse | None = None, timeout: float | None = None, policy: RetryPolicy | None = None,
             on_retry: Callable[[], None] | None = None) -> Awaitable[T]:
        """`send` under the retry policy (the edge's by default): transient faults back off and try again.

        (Plain functions returning the awaitable: every coroutine object a request keeps alive is more
        for the garbage collector to walk, a measurable share of a client's CPU per call.)"""

        def attempt(n: int) -> Awaitable[T]:
            if n > 1 and on_retry is not None:
                on_retry()
            return self.send(server, url, body, parse=parse, refuse=refuse, timeout=timeout)

        return with_retries(attempt, policy or self.policy, what=server.kind)

    async def health(self, url: URL, *, timeout: float) -> int | None:
        """The HTTP status `GET url` answers within `timeout`, or None when the server answers nothing."""
        try:
            async with self._get_session().get(url, timeout=self._limit(timeout)) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):  # (every one a fault: no answer)
            return None

    async def _gate(self, server: Server) -> None:
        wait = server.resume_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        elif server.resume_at:
            server.resume_at = 0.0


def _translated(server: Server, e: BaseException, timeout: float | None) -> BaseException:
    return fault_of(server, e, timeout) or e


def server_words(payload: bytes) -> str:
    """What an error body says, on one line: `{"error": {"message"}}` (OpenAI, vLLM), `{"message"}`,
    `{"detail"}` (FastAPI), else the body itself (an HTML error page, say)."""
    try:
        body = json.loads(payload)
    except ValueError:
        return excerpt(payload, 500)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            inner = inner.get("message") or inner.get("detail") or inner
        if isinstance(inner, str) and inner:
            return excerpt(inner.encode(), 500)
    return excerpt(str(body).encode(), 500)


def excerpt(payload: bytes, limit: int = 200) -> str:
    """A body as one line of at most `limit` characters (for an `error: ...` line)."""
    return " ".join(payload[:limit * 4].decode(errors="replace").split())[:limit]


def _reason(e: BaseException) -> str:
    """The first line of what went wrong, from the innermost exception that says something."""
    for candidate in (e, e.__cause__, e.__context__):
        if candidate is not None and str(candidate).strip():
            return str(candidate).strip().splitlines()[0]
    return type(e).__name__
