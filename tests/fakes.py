"""Scripted servers on loopback for tests: an OpenAI-compatible teacher and a Search-R1 retriever.

They speak real HTTP from a background thread, so the code under test runs exactly as against
vLLM (its own event loops, its own clients). The teacher's behaviour per question is a script:
a list of steps, one per assistant turn; the turn is the number of tool results already sent.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODEL = "Alibaba-NLP/Tongyi-DeepResearch-30B-A3B"
TOOLS_REFUSED = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'


# ---------------------------------------------------------------- script steps


@dataclass
class Search:
    """Call the search tool with these queries (under `key`, default query_list)."""

    queries: list[str]
    key: str = "query_list"
    think: str = "I should look this up."
    say: str = ""


@dataclass
class Answer:
    text: str
    think: str = "I know enough now."


@dataclass
class Say:
    """Plain text: neither a tool call nor an answer."""

    text: str


@dataclass
class Raw:
    """Exactly this content (e.g. a malformed <tool_call>), never a native tool call."""

    content: str


@dataclass
class CallTool:
    """A call of another tool or with other arguments, as the model might get it wrong."""

    name: str
    arguments: dict[str, Any]


@dataclass
class Cut:
    """A reply cut off by max_tokens (finish_reason length); `think`: cut inside its thinking instead."""

    text: str = "Let me think about this at great length"
    think: str | None = None
    at_context: bool = False  # vLLM shrank max_tokens to what was left of the context: fewer tokens came back


@dataclass
class Overflow:
    """vLLM 0.32's 400 for a prompt longer than the context window, or (`exact`) exactly as long as it."""

    exact: bool = False


Step = Search | Answer | Say | Raw | CallTool | Cut | Overflow

# vLLM 0.32's wording (docs/testing.md).
OVERFLOW_MESSAGE = ("This model's maximum context length is 4096 tokens. However, your prompt contains at least "
                    "4097 input tokens, which exceeds this limit even without any output tokens. Please reduce "
                    "the length of the input prompt. (parameter=input_tokens, value=4097)")
AT_LIMIT_MESSAGE = "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)"
FORCE_ANSWER = "You have now reached the maximum context length"  # how hfdistill's force_answer.j2 begins


@dataclass
class Fault:
    """An injected failure for the next matching request."""

    status: int = 500
    body: str = "internal error"
    retry_after: str | None = None
    drop: bool = False  # close the connection without answering
    delay: float = 0.0  # sleep before answering (to trip client timeouts)


# ---------------------------------------------------------------- the teacher


@dataclass
class TeacherBehaviour:
    native: bool = True  # False: a plain `vllm serve` that refuses tools=
    reasoning: str | None = "reasoning"  # "reasoning", "reasoning_content", or None: inline <think>
    hermes_fails: bool = False  # native server leaves <tool_call> text in content, no tool_calls
    default_script: list[Step] = field(default_factory=lambda: [Search(["capital of France"]), Answer("Paris")])
    delay: float = 0.0  # seconds per completion
    max_model_len: int | None = None  # listed at /v1/models, as vLLM lists its context window
    # The reply to hfdistill's request for the final answer at the context limit (None: no answer either).
    forced_answer: str | None = "Paris"
    # Ids and token counts from the conversation rather than from the requests seen so far, so that two runs
    # (one through a fault-injecting proxy) can be compared row for row.
    stable: bool = False


class FakeTeacher:
    """An OpenAI-compatible chat server driven by per-question scripts."""

    def __init__(self, behaviour: TeacherBehaviour | None = None, model: str = MODEL) -> None:
        self.behaviour = behaviour or TeacherBehaviour()
        self.model = model
        self.scripts: dict[str, list[Step]] = {}
        self.faults: list[Fault] = []  # consumed one per chat request, in order
        self.requests: list[dict[str, Any]] = []  # chat requests of rollouts
        # hfdistill's start-up probes, `tools=` and `priority` (never given faults)
        self.probes: list[dict[str, Any]] = []
        self.chat_calls = 0
        self.models_calls = 0
        self.on_request: Callable[[dict[str, Any]], None] | None = None
        self.question_delay: dict[str, float] = {}  # extra seconds for one question's completions
        self.in_flight = 0
        self.max_in_flight = 0
        self.events: list[tuple[float, str, str]] = []  # (time, "start"/"end", question)
        self.hold: threading.Event | None = None  # while set to an unset event, requests wait (after "start")
        self._lock = threading.Lock()

    def script(self, question: str, *steps: Step) -> None:
        self.scripts[question] = list(steps)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _models(self, request: web.Request) -> web.Response:
        with self._lock:
            self.models_calls += 1
        model: dict[str, Any] = {"id": self.model, "object": "model"}
        if self.behaviour.max_model_len is not None:
            model["max_model_len"] = self.behaviour.max_model_len
        return web.json_response({"object": "list", "data": [model]})

    def _take_fault(self) -> Fault | None:
        with self._lock:
            return self.faults.pop(0) if self.faults else None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if _is_probe(body):
            with self._lock:
                self.probes.append(body)
            if "tools" in body and not self.behaviour.native:
                return _tools_refused()
            return web.json_response(self._completion(Say("OK"), native=False, max_tokens=1, serial=0))
        with self._lock:
            self.requests.append(body)
        if self.on_request is not None:
            self.on_request(body)
        fault = self._take_fault()
        if fault is not None:
            return await _apply_fault(fault, request)
        if "tools" in body and not self.behaviour.native:
            return _tools_refused()
        question = _question_of(body["messages"])
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.events.append((time.monotonic(), "start", question))
        try:
            while self.hold is not None and not self.hold.is_set():
                await asyncio.sleep(0.005)
            await asyncio.sleep(self.behaviour.delay + self.question_delay.get(question, 0.0))
        finally:
            with self._lock:
                self.in_flight -= 1
                self.events.append((time.monotonic(), "end", question))
        script = self.scripts.get(question, self.behaviour.default_script)
        turn = _tool_results(body["messages"])
        step = script[min(turn, len(script) - 1)]
        if str(body["messages"][-1].get("content", "")).startswith(FORCE_ANSWER):
            forced = self.behaviour.forced_answer
            step = Answer(forced, think="Time to answer.") if forced is not None else Say("I still cannot tell.")
        if isinstance(step, Overflow):
            message = AT_LIMIT_MESSAGE if step.exact else OVERFLOW_MESSAGE
            return web.json_response({"error": {"message": message, "type": "BadRequestError", "param": None,
                                                "code": 400}}, status=400)
        with self._lock:
            self.chat_calls += 1
            serial = len(json.dumps(body["messages"])) // 50 if self.behaviour.stable else len(self.requests)
        return web.json_response(self._completion(step, native="tools" in body, max_tokens=body.get("max_tokens"),
                                                  serial=serial))

    def _completion(self, step: Step, *, native: bool, max_tokens: int | None, serial: int) -> dict[str, Any]:
        think, content, calls, finish = "", "", [], "stop"
        if isinstance(step, Search):
            think, content = step.think, step.say
            calls = [("search", {step.key: step.queries})]
        elif isinstance(step, CallTool):
            calls = [(step.name, step.arguments)]
        elif isinstance(step, Answer):
            think, content = step.think, f"<answer>{step.text}</answer>"
        elif isinstance(step, Say):
            content = step.text
        elif isinstance(step, Raw):
            content = step.content
        elif isinstance(step, Cut):
            finish = "length"
            if step.think is None:
                content = step.text
            elif self.behaviour.reasoning:  # the reasoning parser returns the open block as reasoning
                return self._reply({"role": "assistant", "content": None, self.behaviour.reasoning: f"\n{step.think}"},
                                   finish, max_tokens, cut_short=step.at_context, serial=serial)
            else:
                content = f"<think>\n{step.think}"
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls and native and not self.behaviour.hermes_fails:
            message["tool_calls"] = [
                {"id": f"chatcmpl-tool-{i}{serial}", "type": "function",
                 "function": {"name": n, "arguments": json.dumps(a)}} for i, (n, a) in enumerate(calls)]
            finish = "tool_calls"
        elif calls:
            blocks = "".join(f"<tool_call>\n{json.dumps({'name': n, 'arguments': a})}\n</tool_call>" for n, a in calls)
            message["content"] = f"{content}\n{blocks}".strip()
        if think and self.behaviour.reasoning:
            # As vLLM 0.32's qwen3 parser splits `<think>\nT\n</think>\n\nC`: the newlines stay on both sides,
            # and a turn that only calls a tool has no content at all.
            message[self.behaviour.reasoning] = f"\n{think}\n"
            message["content"] = f"\n\n{message['content']}" if message["content"] else None
        elif think:
            message["content"] = f"<think>\n{think}\n</think>\n\n{message['content']}"
        cut_short = isinstance(step, Cut) and step.at_context
        return self._reply(message, finish, max_tokens, cut_short=cut_short, serial=serial)

    def _reply(self, message: dict[str, Any], finish: str, max_tokens: int | None, *,
               cut_short: bool, serial: int) -> dict[str, Any]:
        prompt_tokens = 100 + 50 * serial
        if finish == "length" and max_tokens:
            # Near the limit vLLM shortens max_tokens instead of refusing: fewer tokens than asked come back.
            completion_tokens = max_tokens // 4 if cut_short else max_tokens
        else:
            completion_tokens = 20 + len(message["content"] or "") // 4
        return {
            "id": f"chatcmpl-{serial}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


def _is_probe(body: dict[str, Any]) -> bool:
    return body.get("max_tokens") == 1 and body.get("messages") == [{"role": "user", "content": "Say OK."}]


def _tools_refused() -> web.Response:
    return web.json_response({"error": {"message": TOOLS_REFUSED, "type": "BadRequestError", "param": None,
                                        "code": 400}}, status=400)


def _question_of(messages: list[dict[str, Any]]) -> str:
    for m in messages:
        if m.get("role") == "user" and isinstance(m.get("content"), str) and m["content"].startswith("Question:"):
            return m["content"][len("Question:"):].strip()
    return ""


def _tool_results(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages if m.get("role") == "tool"
               or (m.get("role") == "user" and str(m.get("content", "")).startswith("<tool_response>")))


async def _apply_fault(fault: Fault, request: web.Request) -> web.StreamResponse:
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.drop:
        assert request.transport is not None
        request.transport.close()
        return web.Response(status=500)
    headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
    return web.json_response({"object": "error", "message": fault.body, "code": fault.status},
                             status=fault.status, headers=headers)


# ---------------------------------------------------------------- the retriever


class FakeRetriever:
    """A Search-R1 `/retrieve` server over a tiny in-memory corpus (substring scoring)."""

    def __init__(self, corpus: list[dict[str, str]] | None = None) -> None:
        self.corpus = corpus or [
            {"id": "0", "contents": '"Paris"\nParis is the capital and largest city of France.'},
            {"id": "1", "contents": '"France"\nFrance is a country in Western Europe. Its capital is Paris.'},
            {"id": "2", "contents": '"Berlin"\nBerlin is the capital of Germany.'},
            {"id": "3", "contents": '"Haya bint Hussein"\nPrincess Haya bint Hussein founded the Dubai '
                                    'English Speaking College.'},
        ]
        self.requests: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.fail_queries: set[str] = set()  # a request with one of these queries answers 500
        self.flaky_queries: dict[str, int] = {}  # query -> how many more requests with it answer 502
        self.delay = 0.0
        self._lock = threading.Lock()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/retrieve", self._retrieve)
        return app

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"detail": "invalid JSON"}, status=422)
        with self._lock:
            self.requests.append(body)
            fault = self.faults.pop(0) if self.faults else None
        if fault is not None:
            return await _apply_fault(fault, request)
        if self.delay:
            await asyncio.sleep(self.delay)
        queries = set(body.get("queries") or ()) if isinstance(body, dict) else set()
        if self.fail_queries & queries:
            return web.json_response({"detail": "index shard unavailable"}, status=500)
        for q in queries & set(self.flaky_queries):
            if self.flaky_queries[q] > 0:
                self.flaky_queries[q] -= 1
                return web.json_response({"detail": "overloaded"}, status=502)
        if not isinstance(body, dict) or not isinstance(body.get("queries"), list):
            return web.json_response({"detail": [{"loc": ["body", "queries"], "msg": "field required"}]},
                                     status=422)
        topk = int(body.get("topk", 3))
        result = [self._search(q, topk, bool(body.get("return_scores"))) for q in body["queries"]]
        return web.json_response({"result": result})

    def _search(self, query: str, topk: int, scores: bool) -> list[dict[str, Any]]:
        words = set(re.findall(r"\w+", query.lower()))
        ranked = sorted(((len(words & set(re.findall(r"\w+", d["contents"].lower()))), d) for d in self.corpus),
                        key=lambda x: -x[0])[:topk]
        # Like BM25, a passage sharing no word with the query is not a result.
        return [{"document": d, "score": float(s)} if scores else d for s, d in ranked if s > 0]


# ---------------------------------------------------------------- serving


class Served:
    """An aiohttp app running on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._closed = False
        self.port = 0
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test server did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self._app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def stop() -> None:
            await self._runner.cleanup()
            # handlers still sleeping (slow-response faults) would warn when the loop is dropped
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        fut = asyncio.run_coroutine_threadsafe(stop(), self._loop)
        fut.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
