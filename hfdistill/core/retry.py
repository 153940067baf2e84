"""One retry ladder for every HTTP call: transient failures back off and try again, the rest raise."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from hfdistill.core.errors import ServiceError

__all__ = ["RetryPolicy", "is_transient", "parse_retry_after", "with_retries"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How transient HTTP failures are retried: bounded attempts, exponential backoff, full jitter."""

    attempts: int = 5
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    max_backoff: float = 30.0
    timeout: float = 1800.0  # per request; vLLM may queue a request behind hundreds of others
    # While a teacher request is open longer than this, the server is probed this often; two failed
    # probes in a row fail its open requests (a stopped vLLM may hold sockets open without answering).
    stall_probe: float = 20.0

    def delay(self, attempt: int, rand: float, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1`; `rand` is uniform in [0, 1)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_backoff * 4)
        return min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.5 + rand / 2)



async def with_retries(op: Callable[[int], Awaitable[T]], policy: RetryPolicy, *, what: str) -> T:
    """Await `op(attempt)` until it succeeds, fails for good, or `policy.attempts` are spent."""
    attempt = 1
    while True:
        try:
            return await op(attempt)
        except ServiceError as e:
            if not e.transient:
                raise
            if attempt >= policy.attempts:
                e.args = (f"{e} (gave up after {attempt} attempts)",)
                raise
            delay = policy.delay(attempt, random.random(), e.retry_after)
            log.debug("%s failed (attempt %d/%d): %s; retrying in %.1fs", what, attempt, policy.attempts,
                      e, delay)
            await asyncio.sleep(delay)
            attempt += 1


def is_transient(status: int) -> bool:
    """Whether an HTTP status may go away by itself: a timeout, too early, too many requests, a 5xx."""
    return status in (408, 425, 429) or status >= 500


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
