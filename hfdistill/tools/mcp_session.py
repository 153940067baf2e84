"""One MCP server's session in one event loop: opened on first use, kept alive, reopened when it broke.

The SDK's sessions and transports are anyio context managers, which must be entered and left by one
task; so a session is owned by a task of its own, which opens it, hands it over and waits to be told
to close it. Calls from every rollout of the loop share it, at most `concurrency` at a time, each
within the per-call timeout. A server's fault (it cannot be reached, the session broke, a call timed
out) is translated by the edge (`mcp_<server>_<fault>`) and retried with the run's retry policy; a
broken session is closed and the next try opens a new one (a stdio server is started again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from mcp import ClientSession, MCPError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import PaginatedRequestParams

from hfdistill.core.errors import ToolServerError
from hfdistill.core.retry import RetryPolicy, with_retries
from hfdistill.core.tools import ServerResult
from hfdistill.core.toolspec import McpServerSpec
from hfdistill.edge import Server, fault_of, mcp_http_client

__all__ = ["McpSession", "mcp_server", "server_result"]

log = logging.getLogger(__name__)

_INVALID_PARAMS = -32602  # JSON-RPC: the server refused the arguments (or the tool's name): the model's mistake
_CLOSE_TIMEOUT = 5.0  # seconds a closing session may take (a stdio server is stopped within this)


def mcp_server(spec: McpServerSpec, label: str) -> Server:
    """How the edge names this server: causes `mcp_<label>_<fault>`, messages with its command or URL."""
    fix = "check that it starts and answers, or leave its tools out with --tools"
    return Server(kind=f"mcp_{label}", url=spec.describe(), error=ToolServerError, name=f"MCP server {label!r}",
                  fix=fix)


def server_result(result: Any) -> ServerResult:
    """A `CallToolResult` as values: the text of each content item (other kinds named in brackets), the
    structured content, and whether the tool failed."""
    texts = []
    for item in result.content or ():
        kind = getattr(item, "type", "")
        if kind == "text":
            texts.append(item.text)
        elif kind == "resource" and isinstance(getattr(item.resource, "text", None), str):
            texts.append(item.resource.text)
        else:
            where = getattr(item, "uri", None) or getattr(getattr(item, "resource", None), "uri", None)
            mime = getattr(item, "mime_type", None)
            texts.append(f"[{kind}{' ' + str(where) if where else ''}{' ' + str(mime) if mime else ''}]")
    return ServerResult(tuple(texts), result.structured_content, bool(result.is_error))


class McpSession:
    """The `ToolServer` of one MCP server in the running event loop (see the module docstring)."""

    def __init__(self, spec: McpServerSpec, label: str, *, policy: RetryPolicy, timeout: float,
                 concurrency: int) -> None:
        self.spec, self.label = spec, label
        self.server = mcp_server(spec, label)
        self.policy, self.timeout = policy, timeout
        self.opened = 0  # sessions opened so far (a reopened one counts again)
        self.server_name = ""  # what the server calls itself (its `initialize` answer)
        self._slots = asyncio.Semaphore(concurrency)
        self._lock = asyncio.Lock()
        self._session: Any = None
        self._owner: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None

    async def call(self, tool: str, arguments: dict[str, Any]) -> ServerResult:
        async with self._slots:
            return await with_retries(lambda _n: self._attempt(tool, arguments), self.policy, what=self.server.kind)

    async def list_tools(self) -> list[Any]:
        """The server's tools (every page), as the SDK describes them."""
        async def attempt(_n: int) -> list[Any]:
            session = await self._open()
            tools, cursor = [], None
            try:
                while True:
                    page = await asyncio.wait_for(session.list_tools(params=_page(cursor)), self.timeout)
                    tools += page.tools
                    cursor = page.next_cursor
                    if not cursor:
                        return tools
            except Exception as e:  # noqa: BLE001 - translated (or re-raised) by _fault
                raise await self._fault(session, e) from None

        return await with_retries(attempt, self.policy.for_probe(), what=self.server.kind)

    async def _attempt(self, tool: str, arguments: dict[str, Any]) -> ServerResult:
        session = await self._open()
        try:
            result = await asyncio.wait_for(session.call_tool(tool, arguments), self.timeout)
        except MCPError as e:
            if e.code == _INVALID_PARAMS:  # the model's mistake: its observation
                return ServerResult((e.message,), None, True)
            raise await self._fault(session, e) from None
        except Exception as e:  # noqa: BLE001 - translated (or re-raised) by _fault
            raise await self._fault(session, e) from None
        return server_result(result)

    async def _fault(self, session: Any, e: Exception) -> BaseException:
        """The server's fault for `e` (its session closed when the fault broke it), or `e` itself: a bug."""
        fault = fault_of(self.server, e, self.timeout)
        if fault is None:
            return e
        if fault.cause != f"{self.server.kind}_timeout":  # a slow call leaves the session as it was
            await self._close(session)
        return fault

    # ------------------------------------------------------------ the session's life

    async def _open(self) -> Any:
        async with self._lock:
            if self._session is not None and self._owner is not None and not self._owner.done():
                return self._session
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[Any] = loop.create_future()
            stop = asyncio.Event()
            owner = loop.create_task(self._own(ready, stop), name=f"mcp session {self.label}")
            try:
                session = await asyncio.wait_for(asyncio.shield(ready), self.timeout)
            except BaseException as e:
                owner.cancel()
                with contextlib.suppress(BaseException):
                    await owner
                fault = fault_of(self.server, e, self.timeout)
                if fault is None:
                    raise
                raise fault from None
            self._session, self._owner, self._stop = session, owner, stop
            self.opened += 1
            return session

    async def _own(self, ready: asyncio.Future[Any], stop: asyncio.Event) -> None:
        """Open the session, hand it over, hold it until told to stop (or until it breaks)."""
        try:
            async with self._transport() as streams, ClientSession(streams[0], streams[1]) as session:
                init = await session.initialize()
                self.server_name = init.server_info.name or ""
                ready.set_result(session)
                await stop.wait()
        except asyncio.CancelledError:
            if not ready.done():
                ready.cancel()
            raise
        except Exception as e:  # noqa: BLE001 - handed to the opener, or (once open) the calls see the session end
            if not ready.done():
                ready.set_exception(e)
            else:
                log.debug("MCP session %s ended: %r", self.label, e)

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[Any]:
        if self.spec.command:
            params = StdioServerParameters(command=self.spec.command[0], args=list(self.spec.command[1:]))
            async with stdio_client(params) as streams:
                yield streams
        else:
            async with mcp_http_client(dict(self.spec.headers), self.timeout) as client, \
                    streamable_http_client(str(self.spec.url), http_client=client) as streams:
                yield streams

    async def _close(self, session: Any) -> None:
        """Close `session` if it is still the current one (several calls may fail on one broken session)."""
        async with self._lock:
            if session is not self._session:
                return
            owner, stop = self._owner, self._stop
            self._session = self._owner = self._stop = None
        await _stopped(owner, stop)

    async def aclose(self) -> None:
        """Close the session (a stdio server is stopped); a later call opens another."""
        async with self._lock:
            owner, stop = self._owner, self._stop
            self._session = self._owner = self._stop = None
        await _stopped(owner, stop)


async def _stopped(owner: asyncio.Task[None] | None, stop: asyncio.Event | None) -> None:
    if owner is None or stop is None:
        return
    stop.set()
    try:
        await asyncio.wait_for(asyncio.shield(owner), _CLOSE_TIMEOUT)
    except (asyncio.TimeoutError, TimeoutError):
        owner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await owner


def _page(cursor: str | None) -> PaginatedRequestParams | None:
    return PaginatedRequestParams(cursor=cursor) if cursor is not None else None
