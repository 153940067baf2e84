"""The teacher: chat completions on one or more vLLM OpenAI-compatible endpoints.

The request path reads as a ladder: `chat -> with_retries -> _post_once`. Each endpoint has one
official `openai.AsyncOpenAI` client on its aiohttp transport (`DefaultAioHttpClient`); it lists the
served models, and its HTTP client carries the chat requests. Those skip the SDK's request
building (`create()` re-validates the whole history on every call, quadratic over a rollout; even
the low-level `post()` costs twice the transport, SPEC §7): the body is assembled from messages
serialised once each, so a turn costs one JSON encoding of what is new. Nothing above this module
sees an `openai` or HTTP library exception.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai

from hfdistill.config import DistillConfig
from hfdistill.errors import ConfigError, ContextLengthError, TeacherError
from hfdistill.retry import parse_retry_after, with_retries
from hfdistill.types import TeacherReply, ToolCall, Usage

__all__ = ["EndpointPool", "Route", "Teacher", "TeacherStats"]

log = logging.getLogger(__name__)

TEXT_STOP = ["<tool_response>", "\n<tool_response>"]
_CONTEXT_RE = re.compile(r"maximum context length|context length|context window|too long|max_model_len",
                         re.IGNORECASE)
_TOOLS_REFUSED_RE = re.compile(r"tool.choice|enable-auto-tool-choice|tool-call-parser", re.IGNORECASE)
_DOWN_SECONDS = 30.0  # an endpoint that fails at the connection level sits out this long


@dataclass(eq=False)
class Endpoint:
    """One vLLM server: its client, requests in flight, and when it may be used again."""

    url: str
    client: openai.AsyncOpenAI
    http: httpx2.AsyncClient  # the client's own aiohttp-backed HTTP client, for the hot path
    chat_url: httpx2.URL
    name: str  # host:port, for statistics (never credentials)
    outstanding: int = 0
    down_until: float = 0.0

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
            self.encoded.append(json.dumps(message, ensure_ascii=False).encode())
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

    def __init__(self, config: DistillConfig, tools: list[dict[str, Any]],
                 stats: TeacherStats | None = None) -> None:
        self.config = config
        self.tools = tools
        self.model: str | None = config.model
        self.mode: str | None = None if config.tool_call_mode == "auto" else config.tool_call_mode
        self.stats = stats if stats is not None else TeacherStats()
        self.pool = EndpointPool([self._endpoint(url) for url in config.endpoints])
        # Built once: the HTTP client normalises a plain dict on every request.
        self._headers = httpx2.Headers({"Authorization": f"Bearer {config.api_key}",
                                        "Content-Type": "application/json"})
        self._params: tuple[tuple[str | None, str | None], bytes] | None = None

    def _endpoint(self, url: str) -> Endpoint:
        http = openai.DefaultAioHttpClient(limits=_unlimited(), timeout=self.config.retry.timeout)
        client = openai.AsyncOpenAI(base_url=url, api_key=self.config.api_key, max_retries=0,
                                    timeout=self.config.retry.timeout, http_client=http)
        chat_url = httpx2.URL(f"{url}/chat/completions")
        return Endpoint(url, client, http, chat_url, f"{chat_url.host}:{chat_url.port or ''}".rstrip(":"))

    @property
    def in_flight(self) -> int:
        return sum(e.outstanding for e in self.pool.endpoints)

    async def aclose(self) -> None:
        await asyncio.gather(*(e.client.close() for e in self.pool.endpoints))

    # ------------------------------------------------------------ start-up

    async def prepare(self) -> None:
        """Check every endpoint answers, learn the model id, and settle the protocol (auto mode)."""
        served = await asyncio.gather(*(self._served_models(e) for e in self.pool.endpoints))
        if self.model is None:
            ids = {models[0] for models in served}
            if len(ids) > 1:
                raise ConfigError(f"the teacher endpoints serve different models ({', '.join(sorted(ids))}); "
                                  "pass --model")
            self.model = ids.pop()
        else:
            for endpoint, models in zip(self.pool.endpoints, served, strict=True):
                if self.model not in models:
                    raise ConfigError(f"model {self.model!r} is not served at {endpoint.url} (it serves "
                                      f"{', '.join(models)}); fix --model or VLLM_URL")
        if self.mode is None:
            self.mode = await self._detect_mode()
            log.info("tool-call protocol: %s", self.mode)

    async def _served_models(self, endpoint: Endpoint) -> list[str]:
        try:
            page = await endpoint.client.models.list(timeout=30)
        except openai.APIConnectionError as e:
            raise TeacherError(f"cannot reach the teacher at {endpoint.url} ({_reason(e)}); start vLLM "
                               "(vllm serve <model>) or fix VLLM_URL / --vllm_url") from None
        except openai.APIStatusError as e:
            raise _status_error(e.status_code, e.response.content, e.response.headers.get("retry-after"),
                                endpoint.url) from None
        ids = [m.id for m in page.data]
        if not ids:
            raise TeacherError(f"the teacher at {endpoint.url} serves no model; check the vLLM server")
        return ids

    async def _detect_mode(self) -> str:
        """Native when every endpoint accepts `tools=`; text when vLLM refuses them with its 400."""
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": "Say OK."}],
                           "tools": self.tools, "max_tokens": 1}).encode()
        for endpoint in self.pool.endpoints:
            try:
                await self._post_once(endpoint, body)
            except TeacherError as e:
                if e.cause == "tools_refused":
                    log.info("%s refuses tools= (started without --enable-auto-tool-choice); "
                             "using the text protocol", endpoint.url)
                    return "text"
                raise
        return "native"

    # ------------------------------------------------------------ the hot path

    async def chat(self, messages: list[dict[str, Any]], route: Route) -> TeacherReply:
        """One assistant turn for `messages`; raises ContextLengthError when they no longer fit."""
        body = b"".join((self._request_params(), b',"messages":[', route.messages_json(messages), b"]}"))

        async def attempt(n: int) -> TeacherReply:
            endpoint = self.pool.pick(route)
            if n > 1:
                self.stats.retries += 1
            try:
                return await self._post_once(endpoint, body)
            except TeacherError as e:
                if e.cause in ("connection", "timeout"):
                    self.pool.mark_down(endpoint)
                raise

        return await with_retries(attempt, self.config.retry, what="teacher call")

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
            else:
                params["stop"] = TEXT_STOP
            self._params = (key, json.dumps(params, ensure_ascii=False).encode()[:-1])
        return self._params[1]

    async def _post_once(self, endpoint: Endpoint, body: bytes) -> TeacherReply:
        endpoint.outstanding += 1
        try:
            response = await endpoint.http.post(endpoint.chat_url, content=body, headers=self._headers)
            payload = response.content
        except (httpx2.ConnectError, httpx2.ConnectTimeout) as e:
            # (the aiohttp transport reports a refused connection as ConnectTimeout)
            raise TeacherError(f"cannot reach the teacher at {endpoint.url} ({_reason(e)})", transient=True,
                               cause="connection") from None
        except httpx2.TimeoutException:
            raise TeacherError(f"teacher {endpoint.url} timed out after {self.config.retry.timeout:.0f}s",
                               transient=True, cause="timeout") from None
        except httpx2.TransportError as e:
            raise TeacherError(f"cannot reach the teacher at {endpoint.url} ({_reason(e)})", transient=True,
                               cause="connection") from None
        finally:
            endpoint.outstanding -= 1
        if response.status_code >= 400:
            raise _status_error(response.status_code, payload, response.headers.get("retry-after"), endpoint.url)
        reply = _reply(payload, endpoint.url)
        self.stats.calls += 1
        self.stats.by_endpoint[endpoint.name] = self.stats.by_endpoint.get(endpoint.name, 0) + 1
        self.stats.prompt_tokens += reply.usage.prompt_tokens
        self.stats.completion_tokens += reply.usage.completion_tokens
        return reply


def _unlimited() -> Any:
    # The aiohttp transport defaults to 100 connections, which would silently cap the window;
    # the window (--concurrency) is the limit. The Limits type is httpx's or httpx2's, per version.
    from openai._constants import DEFAULT_CONNECTION_LIMITS

    return type(DEFAULT_CONNECTION_LIMITS)(max_connections=None, max_keepalive_connections=None)


def _reason(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    return str(cause or e).strip().splitlines()[0] if str(cause or e).strip() else type(e).__name__


def _status_error(status: int, payload: bytes, retry_after: str | None, url: str) -> TeacherError:
    message = _error_message(payload)
    if status == 400 and _CONTEXT_RE.search(message):
        return ContextLengthError(f"the conversation no longer fits the teacher's context: {message}")
    if status == 400 and _TOOLS_REFUSED_RE.search(message):
        return TeacherError(f"teacher {url} refuses tools= ({message}); start vLLM with "
                            "--enable-auto-tool-choice --tool-call-parser hermes, or use --tool-call-mode text",
                            cause="tools_refused")
    if status in (401, 403):
        return TeacherError(f"teacher {url} refused the API key (HTTP {status}: {message}); set "
                            "OPENAI_API_KEY or --api-key", cause=f"http_{status}")
    if status == 404:
        return TeacherError(f"teacher {url} answered 404 ({message}); check that VLLM_URL ends in /v1 and "
                            "that --model names a served model", cause="http_404")
    transient = status in (408, 409, 425, 429) or status >= 500
    return TeacherError(f"teacher {url} answered HTTP {status}: {message}", transient=transient,
                        cause=f"http_{status}", retry_after=parse_retry_after(retry_after) if transient else None)


def _error_message(payload: bytes) -> str:
    """vLLM's error text: `{"message": ...}` or `{"error": {"message": ...}}`, else the raw body."""
    try:
        body = json.loads(payload)
    except ValueError:
        return payload.decode(errors="replace").strip()[:500]
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(body)[:500]


def _reply(payload: bytes, url: str) -> TeacherReply:
    try:
        data = json.loads(payload)
        choice = data["choices"][0]
        message = choice["message"]
        calls = tuple(
            ToolCall(id=c.get("id") or "", name=c["function"]["name"],
                     arguments=c["function"].get("arguments") or "{}")
            for c in message.get("tool_calls") or ()
        )
        usage = data.get("usage") or {}
        return TeacherReply(
            content=message.get("content") or "",
            reasoning=message.get("reasoning") or message.get("reasoning_content"),
            tool_calls=calls,
            finish_reason=choice.get("finish_reason") or "stop",
            usage=Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)),
        )
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        raise TeacherError(f"teacher {url} answered something that is not a chat completion: "
                           f"{payload[:200]!r}", transient=True, cause="bad_response") from None
