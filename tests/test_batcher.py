"""The batcher: concurrent requests run as one batch, a lone one is not held back, each caller gets its own."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from hfdistill.core.errors import RetrievalError
from hfdistill.retrieval.batcher import Batcher


class Recorder:
    """Work that answers each query with (query, k) results and records the batches it was given."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.delay = delay

    def __call__(self, queries: list[str], k: int) -> list[list[str]]:
        self.batches.append(list(queries))
        time.sleep(self.delay)
        return [[f"{q}#{i}" for i in range(k)] for q in queries]


async def _many(batcher: Batcher[list[str]], n: int) -> list[list[list[str]]]:
    return await asyncio.gather(*(batcher.search([f"q{i}a", f"q{i}b"], 1 + i % 3) for i in range(n)))


def test_concurrent_requests_are_batched_and_answered_each_their_own() -> None:
    work = Recorder(delay=0.01)
    batcher = Batcher(work, max_wait_s=0.005)
    try:
        results = asyncio.run(_many(batcher, 64))
    finally:
        batcher.close()
    assert results == [[[f"q{i}a#{j}" for j in range(1 + i % 3)], [f"q{i}b#{j}" for j in range(1 + i % 3)]]
                       for i in range(64)]
    assert len(work.batches) < 8 and batcher.stats.largest >= 32  # 128 queries in a handful of batches
    assert batcher.stats.queries == 128 and batcher.stats.requests == 64


def test_without_merging_each_request_runs_alone() -> None:
    work = Recorder()
    batcher = Batcher(work, merge=False)
    try:
        asyncio.run(_many(batcher, 10))
    finally:
        batcher.close()
    assert sorted(len(b) for b in work.batches) == [2] * 10


def test_a_batch_never_exceeds_max_queries_by_more_than_a_request() -> None:
    work = Recorder(delay=0.01)
    batcher = Batcher(work, max_wait_s=0.05, max_queries=8)
    try:
        asyncio.run(_many(batcher, 40))
    finally:
        batcher.close()
    assert max(len(b) for b in work.batches) <= 8


def test_a_lone_client_does_not_wait_for_company() -> None:
    batcher = Batcher(Recorder(), max_wait_s=0.5)
    try:
        batcher.submit(["warm"], 1).result()  # the first request may wait: nothing is known yet
        t0 = time.perf_counter()
        for i in range(5):
            assert batcher.submit([f"alone{i}"], 1).result() == [[f"alone{i}#0"]]
        assert time.perf_counter() - t0 < 0.5  # far less than one wait
    finally:
        batcher.close()


def test_requests_arriving_together_wait_for_company_at_most_the_window() -> None:
    work = Recorder()
    batcher = Batcher(work, max_wait_s=0.05)
    try:
        first = [batcher.submit([f"a{i}"], 1) for i in range(3)]
        [f.result() for f in first]
        t0 = time.perf_counter()
        late = batcher.submit(["b0"], 1)
        time.sleep(0.01)
        also = batcher.submit(["b1"], 1)
        assert late.result() == [["b0#0"]] and also.result() == [["b1#0"]]
        assert time.perf_counter() - t0 < 0.5
    finally:
        batcher.close()
    assert work.batches[-1] == ["b0", "b1"]  # the wait joined a request that came 10 ms later


def test_an_error_reaches_every_caller_of_the_batch_and_the_worker_goes_on() -> None:
    calls = []

    def work(queries: list[str], k: int) -> list[list[str]]:
        calls.append(queries)
        if len(calls) == 1:
            raise RetrievalError("the index went away")
        return [[q] for q in queries]

    gate = threading.Event()
    batcher = Batcher(lambda q, k: gate.wait() and work(q, k), max_wait_s=0.05)
    try:
        first = [batcher.submit([f"q{i}"], 1) for i in range(3)]
        gate.set()
        for future in first:
            with pytest.raises(RetrievalError, match="went away"):
                future.result(timeout=10)
        assert batcher.submit(["later"], 1).result(timeout=10) == [["later"]]
    finally:
        batcher.close()


def test_empty_requests_and_a_closed_batcher() -> None:
    batcher = Batcher(Recorder())
    assert batcher.submit([], 3).result() == []
    batcher.close()
    with pytest.raises(RetrievalError, match="closed"):
        batcher.submit(["late"], 1).result(timeout=1)


def test_a_caller_that_gives_up_does_not_break_the_batch() -> None:
    gate = threading.Event()
    batcher = Batcher(lambda q, k: gate.wait() and [[x] for x in q], max_wait_s=0.0)

    async def main() -> list[list[str]]:
        busy = batcher.search(["busy"], 1)  # occupies the worker until the gate opens
        task = asyncio.ensure_future(busy)
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher.search(["gone"], 1))
        kept = asyncio.ensure_future(batcher.search(["kept"], 1))
        await asyncio.sleep(0.01)
        gone.cancel()
        gate.set()
        await task
        return await kept

    try:
        assert asyncio.run(main()) == [["kept"]]
    finally:
        batcher.close()
