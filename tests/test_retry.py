"""The retry ladder: transient service errors are retried a bounded number of times, others raise at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from hfdistill.core.errors import RetrievalError, TeacherError
from hfdistill.core.retry import RetryPolicy, is_transient, parse_retry_after, with_retries

NO_WAIT = RetryPolicy(attempts=3, backoff=0.0)  # every delay is 0: asyncio.sleep(0) only yields


def _failing(errors: list[Exception], attempts: list[int]) -> Callable[[int], Awaitable[str]]:
    """An `op` that raises `errors` in turn, then succeeds; it notes every attempt number it is given."""

    async def op(attempt: int) -> str:
        attempts.append(attempt)
        if errors:
            raise errors.pop(0)
        return f"ok on {attempt}"
    return op


def test_transient_failures_are_retried_until_one_succeeds() -> None:
    attempts: list[int] = []
    errors: list[Exception] = [TeacherError("503", transient=True), RetrievalError("timeout", transient=True)]
    assert asyncio.run(with_retries(_failing(errors, attempts), NO_WAIT, what="chat")) == "ok on 3"
    assert attempts == [1, 2, 3]


def test_a_permanent_failure_raises_on_the_first_attempt_unchanged() -> None:
    attempts: list[int] = []
    with pytest.raises(TeacherError) as caught:
        asyncio.run(with_retries(_failing([TeacherError("HTTP 401")], attempts), NO_WAIT, what="chat"))
    assert attempts == [1] and str(caught.value) == "HTTP 401"


def test_the_last_transient_failure_says_how_many_attempts_were_made() -> None:
    attempts: list[int] = []
    errors: list[Exception] = [TeacherError("HTTP 503", transient=True, cause="http_503") for _ in range(5)]
    with pytest.raises(TeacherError) as caught:
        asyncio.run(with_retries(_failing(errors, attempts), NO_WAIT, what="chat"))
    assert attempts == [1, 2, 3]
    assert str(caught.value) == "HTTP 503 (gave up after 3 attempts)" and caught.value.cause == "http_503"


def test_an_exception_that_is_not_a_service_error_is_not_retried() -> None:
    attempts: list[int] = []
    with pytest.raises(KeyError):
        asyncio.run(with_retries(_failing([KeyError("bug")], attempts), NO_WAIT, what="chat"))
    assert attempts == [1]


def test_a_servers_retry_after_is_clamped_to_zero_and_four_times_the_backoff_cap() -> None:
    policy = RetryPolicy(backoff=1.0, max_backoff=5.0)
    assert policy.delay(3, rand=0.9, retry_after=1000.0) == 20.0
    assert policy.delay(3, rand=0.9, retry_after=-4.0) == 0.0
    assert policy.delay(1, rand=0.9, retry_after=0.0) == 0.0  # zero is a value, not "absent"


@pytest.mark.parametrize(("status", "transient"), [
    pytest.param(400, False, id="bad-request"),
    pytest.param(404, False, id="not-found"),
    pytest.param(408, True, id="request-timeout"),
    pytest.param(425, True, id="too-early"),
    pytest.param(429, True, id="too-many-requests"),
    pytest.param(500, True, id="server-error"),
    pytest.param(599, True, id="any-5xx"),
])
def test_which_statuses_may_go_away_by_themselves(status: int, transient: bool) -> None:
    assert is_transient(status) is transient


@pytest.mark.parametrize(("value", "seconds"), [
    pytest.param(None, None, id="absent"),
    pytest.param("", None, id="empty"),
    pytest.param("soon", None, id="garbage"),
    pytest.param("7", 7.0, id="delta-seconds"),
    pytest.param("2.5", 2.5, id="fractional"),
    pytest.param("-3", 0.0, id="negative"),
    pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", 0.0, id="date-in-the-past"),
])
def test_retry_after_header_values(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_a_retry_after_date_counts_from_now(monkeypatch: pytest.MonkeyPatch) -> None:
    now = 1_445_412_400.0  # Wed, 21 Oct 2015 07:26:40 GMT
    monkeypatch.setattr(time, "time", lambda: now)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 80.0


def _throttled() -> TeacherError:
    return TeacherError("HTTP 429", transient=True, cause="teacher_http_429", retry_after=0.0, throttled=True)


def test_a_rate_limit_waits_without_spending_the_retries() -> None:
    attempts: list[int] = []
    errors: list[Exception] = [_throttled() for _ in range(10)] + [TeacherError("HTTP 503", transient=True)]
    policy = RetryPolicy(attempts=2, backoff=0.0)
    assert asyncio.run(with_retries(_failing(errors, attempts), policy, what="chat")) == "ok on 12"
    assert attempts == list(range(1, 13))  # ten rate-limited tries and one failure, within two attempts


def test_past_its_budget_a_rate_limit_counts_as_a_failure() -> None:
    attempts: list[int] = []
    errors: list[Exception] = [_throttled() for _ in range(10)]
    policy = RetryPolicy(attempts=3, backoff=0.0, throttle_wait=0.0)  # (an exhausted quota also answers 429)
    with pytest.raises(TeacherError) as caught:
        asyncio.run(with_retries(_failing(errors, attempts), policy, what="chat"))
    assert attempts == [1, 2, 3] and caught.value.cause == "teacher_http_429"
    assert str(caught.value) == "HTTP 429 (gave up after 3 attempts)"


def test_the_probe_policy_tries_at_most_three_times() -> None:
    assert RetryPolicy(attempts=5).for_probe().attempts == 3
    assert RetryPolicy(attempts=1).for_probe().attempts == 1
