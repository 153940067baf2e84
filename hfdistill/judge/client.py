"""The LLM judge's HTTP client: one chat call per rollout to an OpenAI-compatible server.

`Judge.verdict -> Edge.call -> Edge.send`: a plain chat-completions POST through the HTTP edge
(hfdistill/edge.py), which retries every fault (a connection error, a timeout, a cut reply, 429,
5xx, a reply that is not a chat completion); a completion without a verdict (the injected `parse`
raises ValueError) is retried too. What still fails raises `JudgeError`, with a cause that names
the fault (`judge_http_503`, `judge_unparsable`, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import yarl

from hfdistill.core.config import JudgeConfig
from hfdistill.core.errors import ConfigError, JudgeError
from hfdistill.core.retry import RetryPolicy
from hfdistill.edge import Edge, Server
from hfdistill.teacher.replies import model_ids
from hfdistill.teacher.served import Served

__all__ = ["Judge", "JudgeStats"]

log = logging.getLogger(__name__)
Parse = Callable[[str], tuple[bool, str]]  # a reply's text -> (correct, rationale); ValueError if none
_MODELS_TIMEOUT = 30.0


@dataclass
class JudgeStats:
    """Judge calls made, retried, and rollouts left unjudged (by cause)."""

    calls: int = 0
    retries: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def failed(self, cause: str) -> None:
        self.failures[cause] = self.failures.get(cause, 0) + 1


class Judge:
    """Chat completions against the judge server; its session is made in the event loop that first uses it."""

    def __init__(self, config: JudgeConfig, retry: RetryPolicy, parse: Parse, stats: JudgeStats | None = None,
                 served: Served | None = None) -> None:
        self.config = config
        self.retry = retry
        self.parse = parse
        self.stats = stats if stats is not None else JudgeStats()
        self.served = served if served is not None else Served(judge_model=config.model)  # shared with the run
        self.url = config.url.rstrip("/")
        self.server = Server("judge", self.url, JudgeError, fix="start it or fix --judge-url")
        self._edge = Edge(retry, headers={"Authorization": f"Bearer {config.api_key}",
                                          "Content-Type": "application/json"})
        self._chat_url = yarl.URL(f"{self.url}/chat/completions")

    @property
    def model(self) -> str | None:
        return self.served.judge_model

    @model.setter
    def model(self, value: str | None) -> None:
        self.served.judge_model = value

    async def aclose(self) -> None:
        await self._edge.aclose()

    async def prepare(self) -> str:
        """Check the judge answers and learn its model id (the first one listed unless --judge-model)."""
        served = await self._edge.call(self.server, f"{self.url}/models", parse=model_ids,
                                       timeout=min(_MODELS_TIMEOUT, self.retry.timeout), policy=self.retry.for_probe())
        if self.model is None:
            if not served:
                raise JudgeError(f"the judge at {self.url} serves no model; check the server or pass --judge-model")
            self.model = next(iter(served))
        elif served and self.model not in served:
            raise ConfigError(f"judge model {self.model!r} is not served at {self.url} (it serves "
                              f"{', '.join(served)}); fix --judge-model or --judge-url")
        return self.model

    async def verdict(self, prompt: str) -> tuple[bool, str]:
        """(correct, rationale) for one rendered prompt; JudgeError once retries are spent."""
        assert self.model is not None, "prepare() first"
        body = orjson.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                             "temperature": 0.0, "max_tokens": self.config.max_tokens})
        return await self._edge.call(self.server, self._chat_url, body, parse=self._verdict_of,
                                     on_retry=self._retried)

    def _retried(self) -> None:
        self.stats.retries += 1

    def _verdict_of(self, payload: bytes) -> tuple[bool, str]:
        """The verdict in a chat completion; ValueError when it is not one (the edge names that), a
        JudgeError when it holds no verdict (not a bug here either: retried)."""
        text = _content(orjson.loads(payload))
        self.stats.calls += 1
        try:
            return self.parse(text)
        except ValueError as e:
            raise self.server.fail("unparsable", f"the judge at {self.url} gave no verdict ({e})") from None


def _content(completion: Any) -> str:
    """The first choice's text; ValueError when `completion` is not a chat completion."""
    try:
        content = completion["choices"][0]["message"].get("content")
    except (TypeError, KeyError, IndexError, AttributeError):
        raise ValueError(f"not a chat completion: {str(completion)[:200]}") from None
    if content is not None and not isinstance(content, str):
        raise ValueError(f"not a chat completion: its content is a {type(content).__name__}")
    return content or ""
