"""The LLM judge's client: one chat call per rollout to an OpenAI-compatible server, and a windowed runner.

`Judge.verdict -> with_retries -> _ask_once`: a connection error, a timeout, 429, 5xx and a reply
without a verdict are retried; what still fails raises `JudgeError`, and its rollout stays
unjudged (`judge_correct` null, counted), never "incorrect". The judge is off the hot path (one
short call per rollout), so it uses the SDK's public `chat.completions.create`. Nothing above this
module sees an `openai` exception.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import openai

from hfdistill.config import JudgeConfig, RetryPolicy
from hfdistill.curation.judge import JUDGE_KEY, JudgePrompt, Verdict, judgeable, parse_verdict, stored_verdict
from hfdistill.errors import ConfigError, JudgeError
from hfdistill.retry import is_transient, parse_retry_after, with_retries

__all__ = ["Judge", "JudgeItem", "JudgeStats", "judge_many", "judge_result"]

log = logging.getLogger(__name__)


@dataclass
class JudgeStats:
    """Judge calls made, retried, and rollouts left unjudged (by cause)."""

    calls: int = 0
    retries: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def failed(self, cause: str) -> None:
        self.failures[cause] = self.failures.get(cause, 0) + 1


@dataclass(frozen=True)
class JudgeItem:
    """What one judgement needs."""

    question: str
    prediction: str
    golden_answers: tuple[str, ...]


class Judge:
    """Chat completions against the judge server; create it inside the event loop that uses it."""

    def __init__(self, config: JudgeConfig, prompt: JudgePrompt, retry: RetryPolicy,
                 stats: JudgeStats | None = None) -> None:
        self.config = config
        self.prompt = prompt
        self.retry = retry
        self.stats = stats if stats is not None else JudgeStats()
        self.model = config.model
        self.url = config.url.rstrip("/")
        # The aiohttp transport (at most 100 connections: plenty for short judge calls): 1000 rollouts x 3
        # against loopback servers took 26 s with the SDK's default transport, 10-13 s with this one.
        self._client = openai.AsyncOpenAI(base_url=self.url, api_key=config.api_key, max_retries=0,
                                          timeout=retry.timeout,
                                          http_client=openai.DefaultAioHttpClient(timeout=retry.timeout))

    async def aclose(self) -> None:
        await self._client.close()

    async def prepare(self) -> str:
        """Check the judge answers and learn its model id (the first one listed unless --judge-model)."""
        try:
            page = await self._client.models.list(timeout=30)
        except openai.APIError as e:
            raise _translate(e, self.url) from None
        served = [m.id for m in page.data]
        if self.model is None:
            if not served:
                raise JudgeError(f"the judge at {self.url} serves no model; check the server or pass --judge-model")
            self.model = served[0]
        elif served and self.model not in served:
            raise ConfigError(f"judge model {self.model!r} is not served at {self.url} (it serves "
                              f"{', '.join(served)}); fix --judge-model or --judge-url")
        return self.model

    async def verdict(self, item: JudgeItem) -> Verdict:
        """The judge's verdict on one prediction; JudgeError once retries are spent."""
        prompt = self.prompt.render(item.question, item.prediction, item.golden_answers)

        async def attempt(n: int) -> Verdict:
            if n > 1:
                self.stats.retries += 1
            return await self._ask_once(prompt)

        return await with_retries(attempt, self.retry, what="judge call")

    async def _ask_once(self, prompt: str) -> Verdict:
        assert self.model is not None, "prepare() first"
        try:
            completion = await self._client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0.0,
                max_tokens=self.config.max_tokens)
        except openai.APIError as e:
            raise _translate(e, self.url) from None
        self.stats.calls += 1
        try:
            text = completion.choices[0].message.content or ""
            correct, rationale = parse_verdict(text)
        except (IndexError, AttributeError, TypeError, ValueError) as e:
            raise JudgeError(f"the judge at {self.url} gave no verdict ({e})", transient=True,
                             cause="judge_unparsable") from None
        return Verdict(correct, rationale, self.model)


def _translate(e: openai.APIError, url: str) -> JudgeError:
    if isinstance(e, openai.APITimeoutError):
        return JudgeError(f"the judge at {url} timed out", transient=True, cause="judge_timeout")
    if isinstance(e, openai.APIConnectionError):
        return JudgeError(f"cannot reach the judge at {url} ({e}); start it or fix --judge-url", transient=True,
                          cause="judge_connection")
    if isinstance(e, openai.APIStatusError):
        status = e.status_code
        transient = is_transient(status)
        return JudgeError(f"the judge at {url} answered HTTP {status}: {e.message}", transient=transient,
                          cause=f"judge_http_{status}",
                          retry_after=parse_retry_after(e.response.headers.get("retry-after")) if transient else None)
    return JudgeError(f"the judge at {url} failed: {e}", cause="judge")


async def judge_many(judge: Judge, items: Sequence[JudgeItem], window: int) -> list[Verdict | JudgeError]:
    """Judge every item, `window` calls at a time; a failure is returned in its place, not raised."""
    slots = asyncio.Semaphore(window)

    async def one(item: JudgeItem) -> Verdict | JudgeError:
        async with slots:
            try:
                return await judge.verdict(item)
            except JudgeError as e:
                judge.stats.failed(e.cause)
                return e

    return list(await asyncio.gather(*(one(item) for item in items)))


async def judge_result(judge: Judge, item: JudgeItem, result: dict[str, Any]) -> dict[str, Any]:
    """`result` with this judge's verdict stored in it, when there is something to judge and it has none.

    A judge that fails for good leaves the rollout unjudged (counted; the next run asks again).
    """
    spec = judge.prompt.spec
    if stored_verdict(result, spec) is not None or not judgeable(item.prediction, item.golden_answers):
        return result
    try:
        verdict = await judge.verdict(item)
    except JudgeError as e:
        judge.stats.failed(e.cause)
        log.debug("the judge failed on %r: %s", item.question[:80], e)
        return result
    return {**result, JUDGE_KEY: verdict.stored(spec)}
