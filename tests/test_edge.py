"""The HTTP edge against real servers on loopback: every fault a transport can raise becomes the server's own
error with a cause `<kind>_<fault>` and its URL; a caller's reading of a status comes first; a rate limit holds
every request to that server; what is not a fault (a bug in a parser) is not hidden."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from hfdistill.core.errors import RetrievalError, ServiceError, TeacherError
from hfdistill.core.retry import RetryPolicy
from hfdistill.edge import Edge, Server, excerpt, fault_of, server_words
from tests.fakes import FakeRetriever, Served
from tests.fault_proxy import FaultProxy

POLICY = RetryPolicy(attempts=3, backoff=0.0, timeout=1.0)
BODY = orjson.dumps({"queries": ["capital of France"], "topk": 1, "return_scores": True})


def _result(payload: bytes) -> Any:
    data = orjson.loads(payload)
    if not isinstance(data, dict) or "result" not in data:
        raise ValueError("no result")
    return data["result"]


def _send(server: Server, url: str, **options: Any) -> Any:
    async def go() -> Any:
        edge = Edge(POLICY)
        try:
            return await edge.send(server, url, BODY, parse=options.pop("parse", _result), **options)
        finally:
            await edge.aclose()

    return asyncio.run(go())


@pytest.fixture
def upstream() -> Iterator[Served]:
    served = Served(FakeRetriever().app())
    yield served
    served.close()


@pytest.mark.parametrize(("kind", "cause", "said"), [
    pytest.param("reset", "retrieval_connection", "dropped the connection", id="reset"),
    pytest.param("cut", "retrieval_payload", "cut its reply short", id="cut"),
    pytest.param("hang", "retrieval_timeout", "timed out after 1s", id="hang"),
    pytest.param("throttle", "retrieval_http_429", "answered HTTP 429: Rate limit reached", id="throttle"),
    pytest.param("html_5xx", "retrieval_http_502", "answered HTTP 502: <html> <head><title>502", id="html-5xx"),
    pytest.param("html_200", "retrieval_bad_response", "answered a bad reply (unexpected character",
                 id="html-200"),
    pytest.param("wrong_shape", "retrieval_bad_response", 'answered a bad reply (no result): {"object"',
                 id="wrong-shape"),
])
def test_each_fault_is_the_servers_transient_error_naming_its_url(upstream: Served, kind: str, cause: str,
                                                                  said: str) -> None:
    front = FaultProxy(upstream.url, [kind], per_request=None, hang=3.0).serve()
    server = Server("retrieval", f"{front.url}/retrieve", RetrievalError, name="retrieval server")
    try:
        with pytest.raises(RetrievalError) as caught:
            _send(server, server.url)
    finally:
        front.close()
    error = caught.value
    assert (error.cause, error.transient, error.throttled) == (cause, True, kind == "throttle")
    assert str(error).startswith(f"retrieval server {server.url} ") and said in str(error)
    assert "\n" not in str(error)
    assert error.retry_after == (1.0 if kind == "throttle" else None)


def test_a_server_that_is_not_there_is_one_line_with_the_fix() -> None:
    server = Server("teacher", "http://127.0.0.1:9/v1", TeacherError, fix="start vLLM")
    with pytest.raises(TeacherError) as caught:
        _send(server, f"{server.url}/models")
    assert caught.value.cause == "teacher_connection" and caught.value.transient
    assert str(caught.value).startswith("cannot reach the teacher at http://127.0.0.1:9/v1 (")
    assert str(caught.value).endswith("; start vLLM")


@pytest.fixture
def not_http() -> Iterator[str]:
    """A TCP server that answers every connection with bytes that are not HTTP."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\nnot an http reply\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()


def test_a_reply_that_is_not_http_is_a_protocol_fault(not_http: str) -> None:
    server = Server("judge", f"{not_http}/v1", ServiceError)
    with pytest.raises(ServiceError) as caught:
        _send(server, f"{server.url}/chat/completions")
    assert caught.value.cause == "judge_protocol" and caught.value.transient
    assert f"judge {server.url} answered something that is not HTTP" in str(caught.value)


def _status_app(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


@pytest.mark.parametrize(("status", "claimed", "cause", "transient"), [
    pytest.param(404, True, "retrieval_http_404", False, id="claimed-by-the-caller"),
    pytest.param(409, False, "retrieval_http_409", False, id="another-4xx-is-final"),
    pytest.param(408, False, "retrieval_http_408", True, id="request-timeout"),
    pytest.param(503, False, "retrieval_http_503", True, id="5xx"),
])
def test_the_caller_reads_a_status_first_and_the_edge_the_rest(status: int, claimed: bool, cause: str,
                                                               transient: bool) -> None:
    seen: list[tuple[int, bytes]] = []

    def refuse(server: Server, code: int, payload: bytes, retry_after: str | None) -> ServiceError | None:
        seen.append((code, payload))
        if code == 404:
            return server.fail("http_404", "not the /retrieve endpoint: fix RETRIEVAL_URL", transient=False)
        return None

    served = Served(_status_app(status, b'{"detail": "nope"}'))
    server = Server("retrieval", f"{served.url}/retrieve", RetrievalError)
    try:
        with pytest.raises(RetrievalError) as caught:
            _send(server, server.url, refuse=refuse)
    finally:
        served.close()
    assert seen == [(status, b'{"detail": "nope"}')]
    assert (caught.value.cause, caught.value.transient) == (cause, transient)
    assert ("fix RETRIEVAL_URL" in str(caught.value)) is claimed
    assert claimed or str(caught.value) == f"retrieval {server.url} answered HTTP {status}: nope"


def test_a_bug_in_a_parser_is_not_taken_for_the_servers_fault(upstream: Served) -> None:
    def broken(payload: bytes) -> Any:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        _send(Server("retrieval", f"{upstream.url}/retrieve", RetrievalError), f"{upstream.url}/retrieve",
              parse=broken)


def test_a_retry_after_holds_every_request_to_that_server_and_no_other() -> None:
    throttled = Served(_status_app(429, b"slow down", {"Retry-After": "1"}))
    other = Served(_status_app(200, b'{"result": []}'))
    a = Server("teacher", throttled.url, TeacherError)
    b = Server("retrieval", other.url, RetrievalError)

    async def go() -> tuple[float, float]:
        edge = Edge(POLICY)
        try:
            with pytest.raises(TeacherError):
                await edge.send(a, a.url, BODY, parse=_result)
            started = time.monotonic()
            await edge.send(b, b.url, BODY, parse=_result)  # another server: not held
            elsewhere = time.monotonic() - started
            with pytest.raises(TeacherError):
                await edge.send(a, a.url, BODY, parse=_result)  # held until the second is over
            return elsewhere, time.monotonic() - started
        finally:
            await edge.aclose()

    try:
        elsewhere, held = asyncio.run(go())
    finally:
        throttled.close()
        other.close()
    assert elsewhere < 0.5 and held >= 0.9


def test_call_retries_with_the_policy_and_counts_the_retries(upstream: Served) -> None:
    front = FaultProxy(upstream.url, ["html_5xx"], per_request=2).serve()  # broken twice, then through
    server = Server("retrieval", f"{front.url}/retrieve", RetrievalError)
    retries: list[int] = []

    async def go() -> Any:
        edge = Edge(POLICY)
        try:
            return await edge.call(server, server.url, BODY, parse=_result, on_retry=lambda: retries.append(1))
        finally:
            await edge.aclose()

    try:
        result = asyncio.run(go())
    finally:
        front.close()
    assert result[0][0]["document"]["id"] == "0" and len(retries) == 2


def test_health_is_any_status_or_none() -> None:
    failing = Served(_status_app(500, b"broken"))

    async def go() -> tuple[int | None, int | None]:
        edge = Edge(POLICY)
        try:
            return (await edge.health(f"{failing.url}/health", timeout=1.0),
                    await edge.health("http://127.0.0.1:9/health", timeout=1.0))
        finally:
            await edge.aclose()

    try:
        assert asyncio.run(go()) == (500, None)
    finally:
        failing.close()


@pytest.mark.parametrize(("error", "cause"), [
    pytest.param(ConnectionResetError(104, "Connection reset by peer"), "mcp_connection", id="os-reset"),
    pytest.param(TimeoutError(), "mcp_timeout", id="timeout"),
    pytest.param(asyncio.TimeoutError(), "mcp_timeout", id="asyncio-timeout"),
])
def test_faults_of_any_transport_are_read_from_the_os_and_asyncio_too(error: BaseException, cause: str) -> None:
    fault = fault_of(Server("mcp", "http://127.0.0.1:7/mcp"), error, 2.0)
    assert fault is not None and fault.cause == cause and fault.transient


def test_what_is_not_a_fault_is_left_alone() -> None:
    assert fault_of(Server("mcp", "http://x/mcp"), KeyError("bug")) is None


@pytest.mark.parametrize(("payload", "words"), [
    pytest.param(b'{"error": {"message": "Rate limit reached"}}', "Rate limit reached", id="openai"),
    pytest.param(b'{"object": "error", "message": "overloaded"}', "overloaded", id="vllm"),
    pytest.param(b'{"detail": "Not Found"}', "Not Found", id="fastapi"),
    pytest.param(b"<html>\n  <body>502</body>\n</html>\n", "<html> <body>502</body> </html>", id="html-one-line"),
])
def test_a_servers_words_are_one_line(payload: bytes, words: str) -> None:
    assert server_words(payload) == words


def test_an_excerpt_is_cut_and_on_one_line() -> None:
    assert excerpt(b"a\nb  c" + b"x" * 500, 10) == "a b cxxxxx"



# ---------------------------------------------------------------- MCP's transports (httpx2, anyio, the SDK)


if sys.version_info >= (3, 11):
    from builtins import ExceptionGroup
else:  # anyio's own backport
    from exceptiongroup import ExceptionGroup

MCP_SERVER = Server("mcp_web", "http://127.0.0.1:9/mcp", name="MCP server 'web'", fix="check that it starts")


def _httpx2_get(url: str, timeout: float) -> BaseException:
    import httpx2

    async def go() -> BaseException:
        async with httpx2.AsyncClient(timeout=timeout) as client:  # (the edge's own waits longer to read)
            try:
                await client.get(url)
            except BaseException as e:  # noqa: BLE001 - what the transport raised is what is tested
                return e
        raise AssertionError("the request did not fail")

    return asyncio.run(go())


def test_httpx2_faults_are_the_servers_own(tmp_path: Any) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    refused = fault_of(MCP_SERVER, _httpx2_get(f"http://127.0.0.1:{port}/mcp", 1.0))
    assert refused is not None and refused.cause == "mcp_web_connection" and refused.transient
    assert str(refused).startswith("cannot reach the MCP server 'web' at http://127.0.0.1:9/mcp (")
    assert str(refused).endswith("; check that it starts")
    with socket.socket() as silent:  # accepts (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        hung = fault_of(MCP_SERVER, _httpx2_get(f"http://127.0.0.1:{silent.getsockname()[1]}/mcp", 0.3), 0.3)
    assert hung is not None and hung.cause == "mcp_web_timeout" and str(hung).endswith("timed out after 0.3s")


def _mcp_error(code: int, message: str) -> BaseException:
    from mcp import MCPError

    return MCPError(code, message)


def _broken() -> BaseException:
    import anyio

    return anyio.BrokenResourceError()


@pytest.mark.parametrize(("make", "cause", "transient", "said"), [
    pytest.param(lambda: _mcp_error(-32000, "Connection closed"), "mcp_web_connection", True,
                 "closed the session (Connection closed)", id="the-sdks-connection-closed"),
    pytest.param(lambda: _mcp_error(-32001, "Request timed out"), "mcp_web_timeout", True, "timed out",
                 id="the-sdks-request-timeout"),
    pytest.param(lambda: _mcp_error(-32603, "Internal error"), "mcp_web_error", True,
                 "answered error -32603: Internal error", id="a-json-rpc-error"),
    pytest.param(_broken, "mcp_web_connection", True, "the session with the MCP server 'web'",
                 id="anyio-stream-broke"),
    pytest.param(lambda: ExceptionGroup("tg", [ExceptionGroup("inner", [_broken()]), ValueError("later")]),
                 "mcp_web_connection", True, "broke (BrokenResourceError)", id="an-exception-groups-first-fault"),
    pytest.param(lambda: FileNotFoundError(2, "No such file or directory"), "mcp_web_connection", False,
                 "cannot start the MCP server 'web'", id="a-command-that-cannot-start"),
])
def test_mcp_faults_are_the_servers_own(make: Any, cause: str, transient: bool, said: str) -> None:
    fault = fault_of(MCP_SERVER, make(), 5.0)
    assert fault is not None and (fault.cause, fault.transient) == (cause, transient)
    assert said in str(fault)


def test_what_mcp_raises_that_is_no_fault_is_not_hidden() -> None:
    assert fault_of(MCP_SERVER, ExceptionGroup("tg", [KeyError("bug")])) is None


def test_the_mcp_http_client_sends_the_servers_headers_and_follows_no_redirect(upstream: Served) -> None:
    from hfdistill.edge import mcp_http_client

    async def go() -> tuple[str, bool, float | None]:
        async with mcp_http_client({"Authorization": "Bearer k"}, 7.0) as client:
            return client.headers["Authorization"], client.follow_redirects, client.timeout.connect

    assert asyncio.run(go()) == ("Bearer k", False, 7.0)
