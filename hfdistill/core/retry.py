"""One retry ladder for every HTTP call (hfdistill/edge.py raises what it retries): transient failures back off
and try again, a rate limit waits, the rest raise."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import logging
import math
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
    """How transient HTTP failures are retried: bounded attempts, exponential backoff, full jitter.

    A server's rate limit (HTTP 429) is not a failure: a throttled call waits as the server asks
    (its Retry-After, else the backoff) without spending `attempts`, for up to `throttle_wait`
    seconds in all; only past that do its 429s count as failures. A hosted endpoint that merely
    throttles a run slows it down and never fails it, while one that refuses for good (an
    exhausted quota also answers 429) still ends.
    """

    attempts: int = 5
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    max_backoff: float = 30.0
    timeout: float = 1800.0  # per request; vLLM may queue a request behind hundreds of others
    # While a teacher request is open longer than this, the server is probed this often; two failed
    # probes in a row fail its open requests (a stopped vLLM may hold sockets open without answering).
    stall_probe: float = 20.0
    throttle_wait: float = 900.0  # seconds one call may spend rate-limited before 429s count as failures

    def delay(self, attempt: int, rand: float, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1`; `rand` is uniform in [0, 1)."""
        if retry_after is not None:
            return self.wait_for(retry_after)
        return min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.5 + rand / 2)

    def wait_for(self, retry_after: float) -> float:
        """A server's Retry-After, within reason (a day-long one would stall the run unseen)."""
        return min(max(retry_after, 0.0), self.max_backoff * 4)

    def for_probe(self) -> RetryPolicy:
        """The start-up probes': a fault or two in passing is retried, a server that only fails is reported
        in seconds."""
        return dataclasses.replace(self, attempts=min(self.attempts, 3))


async def with_retries(op: Callable[[int], Awaitable[T]], policy: RetryPolicy, *, what: str) -> T:
    """Await `op(n)` (n counts the tries) until it succeeds, fails for good, or `policy.attempts` failures
    are spent; rate-limited tries wait without spending them, within `policy.throttle_wait`."""
    n = failures = throttles = 0
    first_throttle = math.inf  # when the first rate-limited try came back
    while True:
        n += 1
        try:
            return await op(n)
        except ServiceError as e:
            if not e.transient:
                raise
            if e.throttled:
                first_throttle = min(first_throttle, time.monotonic())
            if e.throttled and time.monotonic() - first_throttle < policy.throttle_wait:
                throttles += 1
                delay = policy.delay(throttles, random.random(), e.retry_after)
            else:
                failures += 1
                if failures >= policy.attempts:
                    waited = f", rate-limited {throttles} times" if throttles else ""
                    e.args = (f"{e} (gave up after {n} attempts{waited})",)
                    raise
                delay = policy.delay(failures, random.random(), e.retry_after)
            log.debug("%s call failed (try %d, %d failures of %d): %s; retrying in %.1fs", what, n, failures,
                      policy.attempts, e, delay)
            await asyncio.sleep(delay)


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
