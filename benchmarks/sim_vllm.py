"""A simulated vLLM OpenAI-compatible teacher server with continuous batching over S slots.

Each chat request waits (FIFO) for one of S sequence slots, holds it for
`prefill + prefill_per_1k * prompt_tokens / 1000 + completion_tokens * tpot` seconds, then answers.
The server integrates occupied slots over time, so a benchmark can tell how busy a client kept it.

The teacher is scripted and deterministic per question: a question needs a heavy-tailed number of
searches (most 1-3, some 5+), decided by hashing the question, and the server counts the tool results
already in the conversation to decide whether to search again or answer. Every client therefore
sees the same workload. Both tool protocols of docs/vllm.md are spoken: native (`tools` in the request,
`message.tool_calls`, finish `tool_calls`) and text (`<tool_call>` JSON inside `content`).

    python benchmarks/sim_vllm.py --port 8000 --slots 64 --tpot 0.0007
    python benchmarks/sim_vllm.py --self-check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import heapq
import itertools
import json
import random
import re
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

__all__ = [
    "NO_TOOLS_MESSAGE",
    "SimConfig",
    "SlotPool",
    "golden_answer_for",
    "make_app",
    "make_question",
    "question_key",
    "searches_for",
    "self_check",
    "start",
    "workload_stats",
]

DEFAULT_MODEL = "Alibaba-NLP/Tongyi-DeepResearch-30B-A3B"
NO_TOOLS_MESSAGE = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'

# Searches a question needs before answering: most need 1-3, about one in six needs 5 or more.
# Capped at 8 so a run with 10 assistant turns always reaches the answer.
SEARCH_WEIGHTS: dict[int, int] = {0: 3, 1: 30, 2: 25, 3: 17, 4: 9, 5: 6, 6: 4, 7: 3, 8: 3}
MIN_COMPLETION, MAX_COMPLETION = 50, 400
CORRECT_RATE = 0.7  # share of questions the scripted teacher answers correctly
QID_RE = re.compile(r"sim-qid-(\d+)")
# How hfdistill's force_answer.j2 (Tongyi's runner's wording) begins: the simulated teacher answers it at once.
FORCE_ANSWER = "You have now reached the maximum context length"
FILLER = "Let me think about what the question asks and which sources could settle it. "


# --------------------------------------------------------------------------- the scripted teacher


def _rng(*parts: object) -> random.Random:
    # sha256, not hash(): the plan must be identical in every process and every run.
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def make_question(index: int) -> str:
    """The benchmark's question `index`; the `sim-qid-` marker survives any prompt template."""
    rng = _rng("question", index)
    subject = rng.choice(["film", "album", "novel", "bridge", "company", "university", "river", "opera"])
    verb = rng.choice(["founded", "directed", "designed", "named after", "financed", "first described"])
    return f"[sim-qid-{index:06d}] Who {verb} the {subject} that shares a name with entry {index}?"


def question_key(text: str) -> str:
    """The identity of a question inside any prompt: its `sim-qid-` marker, else its normalised text."""
    match = QID_RE.search(text)
    if match:
        return f"sim-qid-{int(match.group(1)):06d}"
    text = text.strip()
    if text.lower().startswith("question:"):
        text = text[len("question:") :]
    return " ".join(text.split())


def searches_for(key: str) -> int:
    return _rng("searches", key).choices(list(SEARCH_WEIGHTS), weights=list(SEARCH_WEIGHTS.values()))[0]


def completion_tokens_for(key: str, turn: int) -> int:
    return _rng("completion", key, turn).randint(MIN_COMPLETION, MAX_COMPLETION)


def golden_answer_for(key: str) -> str:
    return "Entity " + hashlib.sha256(key.encode()).hexdigest()[:6]


def _answer_for(key: str) -> str:
    correct = _rng("correct", key).random() < CORRECT_RATE
    return golden_answer_for(key) if correct else "Unknown entity"


def _queries_for(key: str, turn: int) -> list[str]:
    count = _rng("queries", key, turn).choice([1, 1, 2, 3])
    return [f"{key} fact {turn}.{j}" for j in range(count)]


def workload_stats(keys: Iterable[str], config: SimConfig) -> dict[str, float]:
    """Expected teacher calls and nominal busy slot-seconds, prompt-length prefill excluded."""
    calls, busy, searches = 0, 0.0, []
    for key in keys:
        n = searches_for(key)
        searches.append(n)
        calls += n + 1
        busy += sum(config.service_time(0, completion_tokens_for(key, t)) for t in range(n + 1))
    searches.sort()
    return {
        "questions": len(searches),
        "teacher_calls": calls,
        "mean_searches": sum(searches) / max(1, len(searches)),
        "p90_searches": searches[int(0.9 * (len(searches) - 1))] if searches else 0,
        "max_searches": searches[-1] if searches else 0,
        "nominal_busy_slot_seconds": busy,
    }


# --------------------------------------------------------------------------- reading a request


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _is_tool_result(message: dict[str, Any]) -> bool:
    role = message.get("role")
    return role == "tool" or (role == "user" and _text(message.get("content")).lstrip().startswith("<tool_response>"))


def _conversation_key(messages: list[dict[str, Any]]) -> str:
    for message in messages:
        if message.get("role") == "user" and not _is_tool_result(message):
            return question_key(_text(message.get("content")))
    return ""


def _prompt_tokens(body: dict[str, Any]) -> int:
    # About 4 characters per token; good enough to make long histories cost more prefill.
    chars = len(json.dumps(body.get("tools") or []))
    for message in body["messages"]:
        chars += len(_text(message.get("content"))) + 8
        for call in message.get("tool_calls") or []:
            chars += len(str((call.get("function") or {}).get("arguments", "")))
    return max(1, chars // 4)


# --------------------------------------------------------------------------- building a reply


@dataclass(frozen=True)
class TurnPlan:
    key: str
    turn: int
    answer: bool
    completion_tokens: int
    truncated: bool


def plan_turn(messages: list[dict[str, Any]], max_tokens: int | None) -> TurnPlan:
    key = _conversation_key(messages)
    done = sum(1 for m in messages if _is_tool_result(m))
    planned = completion_tokens_for(key, done)
    truncated = max_tokens is not None and 0 < max_tokens < planned
    forced = messages[-1].get("role") == "user" and _text(messages[-1].get("content")).startswith(FORCE_ANSWER)
    return TurnPlan(key, done, forced or done >= searches_for(key), min(planned, max_tokens or planned), truncated)


def _filler(tokens: int) -> str:
    chars = 4 * tokens
    return (FILLER * (chars // len(FILLER) + 1))[:chars]


def build_message(plan: TurnPlan, native: bool, reasoning_parser: bool, call_id: str) -> tuple[dict, str]:
    """The assistant message and finish_reason vLLM would return for this turn."""
    # About 30 tokens of a complete turn go to tags and the call or answer; thinking fills the rest.
    think = _filler(plan.completion_tokens if plan.truncated else plan.completion_tokens - 30)
    tool_calls: list[dict[str, Any]] = []
    if plan.truncated:
        body, finish, think_block = "", "length", f"<think>{think}"
    else:
        think_block = f"<think>{think}</think>\n\n"
        if plan.answer:
            body, finish = f"<answer>{_answer_for(plan.key)}</answer>", "stop"
        else:
            arguments = {"query_list": _queries_for(plan.key, plan.turn)}
            if native:
                body, finish = "", "tool_calls"
                function = {"name": "search", "arguments": json.dumps(arguments)}
                tool_calls = [{"id": call_id, "type": "function", "function": function}]
            else:
                call = json.dumps({"name": "search", "arguments": arguments})
                body, finish = f"<tool_call>\n{call}\n</tool_call>", "stop"
    message: dict[str, Any] = {"role": "assistant", "content": think_block + body, "tool_calls": tool_calls}
    if reasoning_parser:  # with --reasoning-parser, thinking moves out of content
        message["content"] = body or None
        message["reasoning_content"] = message["reasoning"] = think
    return message, finish


# --------------------------------------------------------------------------- slots and metrics


class SlotPool:
    """Admission to `slots` sequence slots (0 = unlimited), integrating occupied slots over time.

    Waiting requests are admitted in order of (priority, arrival): with every priority 0 (vLLM's
    default `--scheduling-policy fcfs`) that is first come, first served; with `priority` set, a
    lower value is served first, as vLLM's `--scheduling-policy priority` does. (vLLM may also
    preempt a running request for a higher-priority one when its KV cache is full; the simulator
    has no KV cache, so it only orders the queue.)
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.occupied = 0
        self.max_queue = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap
        self._arrivals = itertools.count()
        self._area = 0.0
        self._mark = time.monotonic()

    @property
    def queue_len(self) -> int:
        return len(self._waiters)

    def busy_slot_seconds(self) -> float:
        return self._area + self.occupied * (time.monotonic() - self._mark)

    def reset(self) -> None:
        self._area, self._mark, self.max_queue = 0.0, time.monotonic(), len(self._waiters)

    def _set_occupied(self, occupied: int) -> None:
        now = time.monotonic()
        self._area += self.occupied * (now - self._mark)
        self._mark, self.occupied = now, occupied

    async def acquire(self, priority: int = 0) -> None:
        if not self._waiters and (self.slots <= 0 or self.occupied < self.slots):
            self._set_occupied(self.occupied + 1)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._arrivals), waiter))
        self.max_queue = max(self.max_queue, len(self._waiters))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot reached us just as we were cancelled: pass it on
            # else: left in the heap, cancelled; release() skips it
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():
                waiter.set_result(None)  # hand the slot over: occupancy stays the same
                return
        self._set_occupied(self.occupied - 1)

    @contextlib.asynccontextmanager
    async def slot(self, priority: int = 0) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()


@dataclass
class SimConfig:
    model: str = DEFAULT_MODEL
    slots: int = 64
    prefill: float = 0.02  # seconds per request
    prefill_per_1k: float = 0.0004  # seconds per 1000 prompt tokens
    tpot: float = 0.0007  # seconds per completion token
    no_tools: bool = False  # emulate `vllm serve` without --enable-auto-tool-choice
    reasoning_parser: bool = False  # emulate --reasoning-parser (thinking in message.reasoning)
    scheduling_policy: str = "fcfs"  # vLLM's --scheduling-policy: fcfs refuses a non-zero `priority`
    # vLLM's --max-model-len, listed at /v1/models: a longer prompt is refused, a turn that would not fit is cut
    max_model_len: int | None = None

    def service_time(self, prompt_tokens: int, completion_tokens: int) -> float:
        return self.prefill + self.prefill_per_1k * prompt_tokens / 1000 + self.tpot * completion_tokens


@dataclass
class Counters:
    requests: int = 0
    errors: int = 0
    context_refusals: int = 0  # prompts longer than max_model_len
    native: int = 0
    text: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    work_slot_seconds: float = 0.0  # sum of nominal service times
    first_request_at: float | None = None
    # The first request for more than one token: a one-token request is a start-up probe (hfdistill
    # checks the tool-call parser with one), so the work starts here.
    first_work_at: float | None = None
    last_request_at: float | None = None
    last_response_at: float | None = None


@dataclass
class SimState:
    config: SimConfig
    pool: SlotPool
    counters: Counters = field(default_factory=Counters)
    ids: itertools.count = field(default_factory=itertools.count)


STATE = web.AppKey("sim_state", SimState)


# --------------------------------------------------------------------------- HTTP handlers


def _error(status: int, message: str, kind: str = "BadRequestError") -> web.Response:
    payload = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.json_response(payload, status=status)


async def models(request: web.Request) -> web.Response:
    config = request.app[STATE].config
    entry = {"id": config.model, "object": "model", "created": 0, "owned_by": "vllm", "root": config.model}
    if config.max_model_len is not None:
        entry["max_model_len"] = config.max_model_len
    return web.json_response({"object": "list", "data": [entry]})


async def _read_body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return None
    return body


async def chat_completions(request: web.Request) -> web.Response:
    state = request.app[STATE]
    counters, config = state.counters, state.config
    counters.first_request_at = counters.first_request_at or time.time()
    counters.last_request_at = time.time()
    body = await _read_body(request)
    refusal = _error(400, "request body must be a JSON object with a 'messages' list")
    if body is None or (refusal := _refusal(body, config)) is not None:
        counters.errors += 1
        return refusal
    native = bool(body.get("tools"))
    prompt_tokens, n = _prompt_tokens(body), int(body.get("n") or 1)
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    if config.max_model_len is not None:  # as vLLM 0.32: refuse a prompt that fills the window, else cut to fit
        if prompt_tokens >= config.max_model_len:
            counters.errors += 1
            counters.context_refusals += 1
            return _error(400, f"This model's maximum context length is {config.max_model_len} tokens. However, "
                               f"your prompt contains at least {prompt_tokens} input tokens.")
        max_tokens = min(max_tokens or config.max_model_len, config.max_model_len - prompt_tokens)
    plan = plan_turn(body["messages"], max_tokens)
    if plan.completion_tokens > 1:
        counters.first_work_at = counters.first_work_at or time.time()
    service = config.service_time(prompt_tokens, plan.completion_tokens)
    # n sequences occupy n slots, as in vLLM; they share the plan, so they finish together.
    priority = int(body.get("priority") or 0)
    await asyncio.gather(*(_hold(state.pool, service, priority) for _ in range(n)))
    number = next(state.ids)
    choices = []
    for index in range(n):
        message, finish = build_message(plan, native, config.reasoning_parser, f"chatcmpl-tool-{number:08x}{index}")
        choices.append({"index": index, "message": message, "logprobs": None, "finish_reason": finish})
    _count(counters, native, prompt_tokens, n * plan.completion_tokens, n * service)
    return web.json_response(_completion(config.model, number, choices, prompt_tokens, n * plan.completion_tokens))


def _refusal(body: dict[str, Any], config: SimConfig) -> web.Response | None:
    if body.get("tools") and config.no_tools:
        return _error(400, NO_TOOLS_MESSAGE)
    if body.get("priority") and config.scheduling_policy != "priority":  # vLLM's own words
        return _error(400, f"Got priority {body['priority']} but Priority scheduling is not enabled.")
    if body.get("stream"):
        return _error(400, "sim_vllm does not simulate streaming; send stream=false")
    return None


async def _hold(pool: SlotPool, seconds: float, priority: int) -> None:
    async with pool.slot(priority):
        if seconds > 0:
            await asyncio.sleep(seconds)


def _count(counters: Counters, native: bool, prompt: int, completion: int, service: float) -> None:
    counters.requests += 1
    counters.native += native
    counters.text += not native
    counters.prompt_tokens += prompt
    counters.completion_tokens += completion
    counters.work_slot_seconds += service
    counters.last_response_at = time.time()


def _completion(model: str, number: int, choices: list[dict], prompt: int, completion: int) -> dict:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return {
        "id": f"chatcmpl-{number:010x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def metrics_snapshot(state: SimState) -> dict[str, Any]:
    c, pool = state.counters, state.pool
    return {
        "slots": pool.slots,
        "busy_slot_seconds": pool.busy_slot_seconds(),
        "work_slot_seconds": c.work_slot_seconds,
        "requests": c.requests,
        "errors": c.errors,
        "context_refusals": c.context_refusals,
        "native_requests": c.native,
        "text_requests": c.text,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "occupied_slots": pool.occupied,
        "queue_len": pool.queue_len,
        "max_queue_len": pool.max_queue,
        "first_request_at": c.first_request_at,
        "first_work_at": c.first_work_at,
        "last_request_at": c.last_request_at,
        "last_response_at": c.last_response_at,
        "now": time.time(),
    }


async def metrics(request: web.Request) -> web.Response:
    return web.json_response(metrics_snapshot(request.app[STATE]))


async def reset_metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.counters = Counters()
    state.pool.reset()
    return web.json_response(metrics_snapshot(state))


async def health(_: web.Request) -> web.Response:
    return web.Response(text="")


def make_app(config: SimConfig) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE] = SimState(config, SlotPool(config.slots))
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/metrics/reset", reset_metrics)
    app.router.add_get("/health", health)
    return app


async def start(config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve in the running loop; returns the runner (call `cleanup()`) and the bound port."""
    # A request whose client disconnects is dropped, queued or running, as vLLM drops it (its chat
    # endpoint is wrapped in `with_cancellation`); access logs would cost CPU per call.
    runner = web.AppRunner(make_app(config), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    return runner, runner.addresses[0][1]


# --------------------------------------------------------------------------- self-check


async def _burst(session: aiohttp.ClientSession, url: str, n: int) -> tuple[float, list[float]]:
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": make_question(1)}]}

    async def one() -> float:
        t0 = time.perf_counter()
        async with session.post(f"{url}/v1/chat/completions", json=body) as response:
            await response.read()
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    latencies = await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - t0, sorted(latencies)


async def _check_slots(session: aiohttp.ClientSession, url: str, slots: int, hold: float) -> list[str]:
    failures: list[str] = []
    for n in (slots, 2 * slots):
        await session.post(f"{url}/metrics/reset")
        wall, latencies = await _burst(session, url, n)
        m = await (await session.get(f"{url}/metrics")).json()
        util = m["busy_slot_seconds"] / (slots * wall)
        waves = n // slots
        print(
            f"  {n} requests on {slots} slots: wall {wall:.3f}s (expect {waves * hold:.2f}), "
            f"utilisation {util:.3f}, max queue {m['max_queue_len']}, "
            f"latencies {latencies[0]:.3f}..{latencies[-1]:.3f}s"
        )
        if abs(wall - waves * hold) > 0.15 * hold or util < 0.9:
            failures.append(f"{n} requests: wall {wall:.3f}s, utilisation {util:.3f}")
        if m["max_queue_len"] != n - slots:
            failures.append(f"{n} requests: max queue {m['max_queue_len']}, expected {n - slots}")
        if abs(m["busy_slot_seconds"] - n * hold) > 0.1 * n * hold:
            failures.append(f"{n} requests: busy {m['busy_slot_seconds']:.3f} slot-s, expected {n * hold:.2f}")
        if n > slots and latencies[slots] < 1.8 * hold:
            failures.append(f"{n} requests: the second half did not wait ({latencies[slots]:.3f}s)")
    return failures


def _find_question(searches: int) -> str:
    return next(make_question(i) for i in itertools.count() if searches_for(question_key(make_question(i))) == searches)


async def _check_protocol(session: aiohttp.ClientSession, url: str) -> list[str]:
    failures: list[str] = []
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Question: " + _find_question(2)}]
    expected = ["tool_calls", "tool_calls", "stop"]
    for turn, finish in enumerate(expected):
        reply = await (
            await session.post(f"{url}/v1/chat/completions", json={"messages": messages, "tools": tools})
        ).json()
        choice = reply["choices"][0]
        if choice["finish_reason"] != finish:
            failures.append(f"native turn {turn}: finish {choice['finish_reason']}, expected {finish}")
        calls = choice["message"]["tool_calls"]
        messages.append({"role": "assistant", "content": "", "tool_calls": calls})
        messages.append({"role": "tool", "tool_call_id": calls[0]["id"] if calls else "", "content": "obs"})
    if "<answer>" not in choice["message"]["content"]:
        failures.append("native: the last turn has no <answer>")
    text = [{"role": "user", "content": _find_question(1)}]
    reply = await (await session.post(f"{url}/v1/chat/completions", json={"messages": text})).json()
    content = reply["choices"][0]["message"]["content"]
    if "<tool_call>" not in content or reply["choices"][0]["finish_reason"] != "stop":
        failures.append("text protocol: no <tool_call> in content")
    text += [
        {"role": "assistant", "content": content},
        {"role": "user", "content": "<tool_response>x</tool_response>"},
    ]
    reply = await (await session.post(f"{url}/v1/chat/completions", json={"messages": text, "max_tokens": 10})).json()
    if reply["choices"][0]["finish_reason"] != "length" or reply["usage"]["completion_tokens"] != 10:
        failures.append("max_tokens below the planned completion should finish with 'length'")
    return failures


async def _check_priority(session: aiohttp.ClientSession, url: str, fcfs_url: str) -> list[str]:
    """One slot: requests queued behind a running one are served lowest priority value first; fcfs refuses."""
    failures: list[str] = []
    order: list[int] = []

    async def one(priority: int) -> None:
        body = {"messages": [{"role": "user", "content": make_question(1)}], "priority": priority}
        async with session.post(f"{url}/v1/chat/completions", json=body) as r:
            await r.read()
        order.append(priority)

    first = asyncio.create_task(one(5))
    await asyncio.sleep(0.05)  # holds the slot
    queued = [asyncio.create_task(one(p)) for p in (0, -2, -1)]
    await asyncio.gather(first, *queued)
    if order != [5, -2, -1, 0]:
        failures.append(f"priority: served in order {order}, expected [5, -2, -1, 0]")
    body = {"messages": [{"role": "user", "content": "q"}], "priority": -1}
    async with session.post(f"{fcfs_url}/v1/chat/completions", json=body) as r:
        if r.status != 400 or "Priority scheduling is not enabled" not in (await r.json())["error"]["message"]:
            failures.append(f"fcfs: a priority request got {r.status}, expected vLLM's 400")
    return failures


async def self_check() -> list[str]:
    """Slot accounting and protocol checks against an in-process server; returns the failures."""
    slots, hold = 4, 0.4
    runner, port = await start(SimConfig(slots=slots, prefill=hold, prefill_per_1k=0, tpot=0))
    refusing, refusing_port = await start(SimConfig(no_tools=True, prefill=0, tpot=0))
    ordered, ordered_port = await start(SimConfig(slots=1, prefill=0.2, prefill_per_1k=0, tpot=0,
                                                  scheduling_policy="priority"))
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}"
            failures = await _check_slots(session, url, slots, hold)
            failures += await _check_protocol(session, url)
            body = {"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function"}]}
            async with session.post(f"http://127.0.0.1:{refusing_port}/v1/chat/completions", json=body) as r:
                if r.status != 400 or NO_TOOLS_MESSAGE not in (await r.json())["error"]["message"]:
                    failures.append(f"--no-tools: expected 400 with vLLM's message, got {r.status}")
            failures += await _check_priority(session, f"http://127.0.0.1:{ordered_port}", url)
    finally:
        await runner.cleanup()
        await refusing.cleanup()
        await ordered.cleanup()
    return failures


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    p.add_argument("--slots", type=int, default=64, help="sequence slots; 0 = unlimited")
    p.add_argument("--prefill", type=float, default=0.02, help="seconds per request")
    p.add_argument("--prefill-per-1k", type=float, default=0.0004, help="seconds per 1000 prompt tokens")
    p.add_argument("--tpot", type=float, default=0.0007, help="seconds per completion token")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--no-tools", action="store_true", help="refuse requests with `tools` (HTTP 400)")
    p.add_argument("--reasoning-parser", action="store_true", help="put thinking in message.reasoning")
    p.add_argument("--scheduling-policy", choices=("fcfs", "priority"), default="fcfs",
                   help="fcfs (vLLM's default) refuses requests with a non-zero priority; priority serves the "
                        "lowest value first")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="the context window listed at /v1/models: a longer prompt is refused (HTTP 400), a turn "
                        "that would not fit is cut (finish length)")
    p.add_argument("--self-check", action="store_true", help="check slot accounting and protocol, then exit")
    return p.parse_args(argv)


async def serve(config: SimConfig, host: str, port: int) -> None:
    runner, bound = await start(config, host, port)
    # The benchmark driver reads this line to learn the port.
    print(f"sim_vllm listening on http://{host}:{bound} (slots={config.slots})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.self_check:
        failures = asyncio.run(self_check())
        print("\n".join(f"FAIL {f}" for f in failures) or "sim_vllm self-check passed")
        return 1 if failures else 0
    config = SimConfig(
        args.model,
        args.slots,
        args.prefill,
        args.prefill_per_1k,
        args.tpot,
        args.no_tools,
        args.reasoning_parser,
        args.scheduling_policy,
        args.max_model_len,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
