"""The teacher: chat completions on one or more vLLM OpenAI-compatible endpoints.

The request path reads as a ladder: `chat -> with_retries -> _post_once`. The requests go over one
aiohttp session per teacher (per event loop), as the retriever's do. Not through the openai SDK:
`create()` re-validates the whole history on every call (quadratic over a rollout), and even its
HTTP client (httpx over aiohttp) cost 0.2 ms of CPU per call, a quarter of the client's whole
cost (`benchmarks/bench_throughput.py --only cpu`). The body is assembled
from messages serialised once each, so a turn costs one JSON encoding of what is new. Nothing above
this module sees an aiohttp exception.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from hfdistill.core.config import DistillConfig
from hfdistill.core.errors import ConfigError, TeacherError
from hfdistill.core.retry import with_retries
from hfdistill.core.types import TeacherReply
from hfdistill.teacher.pool import Endpoint, EndpointPool, Route
from hfdistill.teacher.replies import reply_of, status_error
from hfdistill.teacher.served import Served

__all__ = ["Teacher", "TeacherStats"]

log = logging.getLogger(__name__)

# vLLM tries stop strings in list order: the longer one first, or "<tool_response>" always wins and the
# newline the model wrote before it stays at the end of the turn.
STOP = ["\n<tool_response>", "<tool_response>"]
_STALL_PROBES = 2  # failed health probes in a row after which an endpoint's open requests are failed


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
                 served: Served | None = None) -> None:
        self.config = config
        self.tools = tools
        self.served = served if served is not None else Served.asked(config)  # shared with the distiller
        self.stats = stats if stats is not None else TeacherStats()
        self.pool = EndpointPool([Endpoint.at(url) for url in config.endpoints])
        for endpoint in self.pool.endpoints:
            endpoint.priority = endpoint.url not in self.served.no_priority
        self._session: aiohttp.ClientSession | None = None
        self._params: tuple[tuple[str | None, str | None], bytes] | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The HTTP session, made in the event loop that first uses it (an aiohttp session belongs to one)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),  # the window (--concurrency) is the limit
                timeout=aiohttp.ClientTimeout(total=self.config.retry.timeout),
                headers={"Authorization": f"Bearer {self.config.api_key}", "Content-Type": "application/json"})
        return self._session

    @property
    def closed(self) -> bool:
        return self._session is None or self._session.closed

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
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------ start-up

    async def prepare(self) -> None:
        """Check every endpoint answers, learn the model id, and settle the protocol (auto mode)."""
        served = await asyncio.gather(*(self._served_models(e) for e in self.pool.endpoints))
        if self.model is None:
            ids = {next(iter(models)) for models in served}
            if len(ids) > 1:
                raise ConfigError(f"the teacher endpoints serve different models ({', '.join(sorted(ids))}); "
                                  "pass --model")
            self.model = ids.pop()
        else:
            for endpoint, models in zip(self.pool.endpoints, served, strict=True):
                if self.model not in models:
                    raise ConfigError(f"model {self.model!r} is not served at {endpoint.url} (it serves "
                                      f"{', '.join(models)}); fix --model or VLLM_URL")
        windows = [w for models in served if (w := models[self.model]) is not None]
        self.served.max_model_len = min(windows) if len(windows) == len(served) else None
        if self.mode is None:
            self.mode = "text" if await self._refusing_tools() else "native"
            log.info("tool-call protocol: %s", self.mode)
        elif self.mode == "native":
            refusing = await self._refusing_tools()
            if refusing:
                # Every rollout would fail the same way, and no rerun could fix it: a usage error, now.
                raise ConfigError(f"--tool-call-mode native needs vLLM's tool-call parser, but the teacher at "
                                  f"{refusing[0].url} refuses tools= (it was started without it); start vLLM with "
                                  "--enable-auto-tool-choice --tool-call-parser hermes, or use --tool-call-mode "
                                  "text (or auto)")
        if self.config.priority != "off":
            await self._settle_priority()

    async def _served_models(self, endpoint: Endpoint) -> dict[str, int | None]:
        """The models an endpoint serves, each with its context window when the server lists one (vLLM does)."""
        try:
            async with self.session.get(endpoint.models_url, timeout=aiohttp.ClientTimeout(total=30)) as response:
                payload = await response.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise TeacherError(f"cannot reach the teacher at {endpoint.url} ({_reason(e)}); start vLLM "
                               "(vllm serve <model>) or fix VLLM_URL / --vllm_url") from None
        if response.status >= 400:
            raise status_error(response.status, payload, response.headers.get("Retry-After"), endpoint.url)
        ids = _model_ids(payload)
        if ids is None:
            raise TeacherError(f"{endpoint.url}/models did not answer an OpenAI model list; check VLLM_URL "
                               "names the vLLM server's /v1")
        if not ids:
            raise TeacherError(f"the teacher at {endpoint.url} serves no model; check the vLLM server")
        return ids

    async def _refusing_tools(self) -> list[Endpoint]:
        """The endpoints that refuse `tools=` with vLLM's 400 (started without a tool-call parser)."""
        refusing = await self._refusing({"tools": self.tools}, "tools_refused")
        for endpoint in refusing:
            log.info("%s refuses tools= (started without --enable-auto-tool-choice)", endpoint.url)
        return refusing

    async def _settle_priority(self) -> None:
        """Ask each server once whether it takes request priorities. vLLM refuses them under its default
        fcfs policy, and learning that from rollouts costs a refused request for every continuing turn
        sent before the first refusal is back: a whole window of them when a rerun resumes its
        conversations."""
        for endpoint in await self._refusing({"priority": -1}, "priority_refused"):
            if self.config.priority == "on":
                raise ConfigError(f"--priority on needs a teacher that schedules by priority, and "
                                  f"{endpoint.url} refuses request priorities; start vLLM with "
                                  "--scheduling-policy priority, or pass --priority auto or off")
            self._send_no_priority(endpoint)

    async def _refusing(self, extra: dict[str, Any], cause: str) -> list[Endpoint]:
        """The endpoints that refuse a one-token request with `extra` fields, for `cause` (other errors raise)."""
        body = orjson.dumps({"model": self.model, "messages": [{"role": "user", "content": "Say OK."}],
                             "max_tokens": 1, **extra})
        refusing = []
        for endpoint in self.pool.endpoints:
            try:
                await self._post_once(endpoint, body)
            except TeacherError as e:
                if e.cause != cause:
                    raise
                refusing.append(endpoint)
        return refusing

    def _send_no_priority(self, endpoint: Endpoint) -> None:
        if endpoint.priority:
            log.info("teacher %s does not schedule by priority (vLLM --scheduling-policy fcfs); sending it none",
                     endpoint.url)
        endpoint.priority = False
        self.served.no_priority.add(endpoint.url)  # for the teachers of other event loops, and of workers

    # ------------------------------------------------------------ the hot path

    async def chat(self, messages: list[dict[str, Any]], route: Route) -> TeacherReply:
        """One assistant turn for `messages`; raises ContextLengthError when they no longer fit."""
        params, history = self._request_params(), route.messages_json(messages)
        # Continuing conversations first: with vLLM's --scheduling-policy priority the lowest value is
        # served first, so turn n (priority 1 - n) never queues behind new conversations (turn 1, 0).
        priority = 0 if self.config.priority == "off" else -sum(m.get("role") == "assistant" for m in messages)

        def body(endpoint: Endpoint) -> bytes:
            extra = b',"priority":%d' % priority if priority and endpoint.priority else b""
            return b"".join((params, extra, b',"messages":[', history, b"]}"))

        async def attempt(n: int) -> TeacherReply:
            endpoint = self.pool.pick(route)
            if n > 1:
                self.stats.retries += 1
            try:
                reply = await self._post_once(endpoint, body(endpoint))
            except TeacherError as e:
                if e.cause == "priority_refused" and self.config.priority == "auto":
                    # (a server restarted with the fcfs policy since the start-up probe)
                    self._send_no_priority(endpoint)
                    reply = await self._post_once(endpoint, body(endpoint))
                    self._count(endpoint, reply)
                    return reply
                if e.cause in ("connection", "timeout", "stalled"):
                    self.pool.mark_down(endpoint)
                raise
            self._count(endpoint, reply)
            return reply

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
            # In both protocols: a model that goes on to invent the tool's result is cut there (vLLM's tool
            # parser still reads the call before it), rather than generating tokens that are thrown away.
            params["stop"] = STOP
            self._params = (key, json.dumps(params, ensure_ascii=False).encode()[:-1])
        return self._params[1]

    async def _post_once(self, endpoint: Endpoint, body: bytes) -> TeacherReply:
        if endpoint.stalled and not await self._answers(endpoint):
            raise _stalled(endpoint)
        task = asyncio.current_task()
        assert task is not None
        endpoint.outstanding += 1
        endpoint.open[task] = time.monotonic()
        self._watch(endpoint)
        try:
            async with self.session.post(endpoint.chat_url, data=body) as response:
                payload = await response.read()
        except asyncio.CancelledError:
            if task not in endpoint.failed_by_watchdog:
                raise
            endpoint.failed_by_watchdog.discard(task)
            if hasattr(task, "uncancel"):  # Python >= 3.11: this cancellation is handled here
                task.uncancel()
            raise _stalled(endpoint) from None
        except asyncio.TimeoutError:  # (aiohttp's timeouts are asyncio's)
            raise TeacherError(f"teacher {endpoint.url} timed out after {self.config.retry.timeout:.0f}s",
                               transient=True, cause="timeout") from None
        except aiohttp.ClientError as e:
            raise TeacherError(f"cannot reach the teacher at {endpoint.url} ({_reason(e)})", transient=True,
                               cause="connection") from None
        finally:
            endpoint.outstanding -= 1
            endpoint.open.pop(task, None)
        if response.status >= 400:
            raise status_error(response.status, payload, response.headers.get("Retry-After"), endpoint.url)
        return reply_of(payload, endpoint.url, self.config.max_tokens)

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
        try:
            async with self.session.get(endpoint.models_url,
                                        timeout=aiohttp.ClientTimeout(total=self.config.retry.stall_probe)):
                pass
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False
        endpoint.stalled = False
        return True


def _stalled(endpoint: Endpoint) -> TeacherError:
    return TeacherError(f"teacher {endpoint.url} stopped answering (its /v1/models health probe fails)",
                        transient=True, cause="stalled")


def _model_ids(payload: bytes) -> dict[str, int | None] | None:
    """The ids of an OpenAI `GET /v1/models` answer with vLLM's `max_model_len` of each (None where not
    listed), or None when it is not such an answer."""
    try:
        data = orjson.loads(payload).get("data")
        return {str(m["id"]): m["max_model_len"] if isinstance(m.get("max_model_len"), int) else None for m in data}
    except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
        return None


def _reason(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    return str(cause or e).strip().splitlines()[0] if str(cause or e).strip() else type(e).__name__
