"""The LLM judge's HTTP client: one chat call per rollout to an OpenAI-compatible server.

`Judge.verdict -> with_retries -> _ask_once`: a connection error, a timeout, 429, 5xx and a reply
without a verdict (the injected `parse` raises ValueError) are retried; what still fails raises
`JudgeError`. The judge is off the hot path (one short call per rollout), so it uses the SDK's
public `chat.completions.create`. Nothing above this module sees an `openai` exception.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import openai

from hfdistill.core.config import JudgeConfig
from hfdistill.core.errors import ConfigError, JudgeError
from hfdistill.core.retry import RetryPolicy, is_transient, parse_retry_after, with_retries
from hfdistill.teacher.served import Served

__all__ = ["Judge", "JudgeStats"]

log = logging.getLogger(__name__)
Parse = Callable[[str], tuple[bool, str]]  # a reply's text -> (correct, rationale); ValueError if none


@dataclass
class JudgeStats:
    """Judge calls made, retried, and rollouts left unjudged (by cause)."""

    calls: int = 0
    retries: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def failed(self, cause: str) -> None:
        self.failures[cause] = self.failures.get(cause, 0) + 1


class Judge:
    """Chat completions against the judge server; create it inside the event loop that uses it."""

    def __init__(self, config: JudgeConfig, retry: RetryPolicy, parse: Parse, stats: JudgeStats | None = None,
                 served: Served | None = None) -> None:
        self.config = config
        self.retry = retry
        self.parse = parse
        self.stats = stats if stats is not None else JudgeStats()
        self.served = served if served is not None else Served(judge_model=config.model)  # shared with the run
        self.url = config.url.rstrip("/")
        # The aiohttp transport (at most 100 connections: plenty for short judge calls): 1000 rollouts x 3
        # against loopback servers took 26 s with the SDK's default transport, 10-13 s with this one.
        self._client = openai.AsyncOpenAI(base_url=self.url, api_key=config.api_key, max_retries=0,
                                          timeout=retry.timeout,
                                          http_client=openai.DefaultAioHttpClient(timeout=retry.timeout))

    @property
    def model(self) -> str | None:
        return self.served.judge_model

    @model.setter
    def model(self, value: str | None) -> None:
        self.served.judge_model = value

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

    async def verdict(self, prompt: str) -> tuple[bool, str]:
        """(correct, rationale) for one rendered prompt; JudgeError once retries are spent."""

        async def attempt(n: int) -> tuple[bool, str]:
            if n > 1:
                self.stats.retries += 1
            return await self._ask_once(prompt)

        return await with_retries(attempt, self.retry, what="judge call")

    async def _ask_once(self, prompt: str) -> tuple[bool, str]:
        assert self.model is not None, "prepare() first"
        try:
            completion = await self._client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0.0,
                max_tokens=self.config.max_tokens)
        except openai.APIError as e:
            raise _translate(e, self.url) from None
        self.stats.calls += 1
        try:
            return self.parse(completion.choices[0].message.content or "")
        except (IndexError, ValueError) as e:  # no choice, or no verdict in it (not a bug here: retried)
            raise JudgeError(f"the judge at {self.url} gave no verdict ({e})", transient=True,
                             cause="judge_unparsable") from None


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
