"""Queries that arrive together are answered together: one worker thread takes every request
waiting for it (from concurrent rollouts, or concurrent HTTP requests at the server), runs them as one
batch, and hands each caller its own results.

Batching costs a lone query nothing: requests that arrive while a batch runs simply join the next
one, and a request that finds the worker idle waits for company (at most `max_wait_s`, a few
milliseconds) only while requests have been arriving together, i.e. when the last batch held more
than one; a single client is answered at once.

The work runs on the worker thread, never on an event loop, and any number of event loops (or
plain threads) may submit. With `merge=False` each request is run alone, one at a time:
the comparison the benchmark makes.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hfdistill.core.errors import RetrievalError

__all__ = ["Batcher", "BatcherStats"]

log = logging.getLogger(__name__)

R = TypeVar("R")
Work = Callable[[list[str], int], list[R]]  # queries, k -> one result per query


@dataclass
class _Job(Generic[R]):
    queries: list[str]
    k: int
    future: Future[list[R]] = field(default_factory=Future)


@dataclass
class BatcherStats:
    """How much batching happened: batches run, queries answered, the largest batch."""

    batches: int = 0
    queries: int = 0
    requests: int = 0
    largest: int = 0

    @property
    def mean_batch(self) -> float:
        return self.queries / self.batches if self.batches else 0.0


class Batcher(Generic[R]):
    """Runs `work(queries, k)` on one worker thread for batches of concurrent requests."""

    def __init__(self, work: Work[R], *, max_wait_s: float = 0.002, max_queries: int = 512, merge: bool = True,
                 name: str = "hfdistill-batcher") -> None:
        self._work = work
        self.max_wait_s, self.max_queries, self.merge = max_wait_s, max_queries, merge
        self.stats = BatcherStats()
        self._queue: queue.SimpleQueue[_Job[R] | None] = queue.SimpleQueue()
        self._closed = False
        self._together = True  # the last batch held several requests: worth waiting for company
        self._lock = threading.Lock()  # a request is queued before close()'s sentinel, or refused
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, queries: Sequence[str], k: int) -> Future[list[R]]:
        """A future of one result per query, resolved on the worker thread."""
        job: _Job[R] = _Job(list(queries), k)
        if not job.queries:
            job.future.set_result([])
            return job.future
        with self._lock:
            if not self._closed:
                self._queue.put(job)
                return job.future
        job.future.set_exception(RetrievalError("the dense retriever is closed"))
        return job.future

    async def search(self, queries: Sequence[str], k: int) -> list[R]:
        """`submit`, awaited from any event loop without blocking it."""
        return await asyncio.wrap_future(self.submit(queries, k))

    def close(self) -> None:
        """Finish the batch in progress, fail the requests still waiting, stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout=60)

    # ------------------------------------------------------------ worker

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            jobs = self._gather(first) if self.merge else [first]
            if jobs[-1] is None:  # close() arrived while gathering
                jobs.pop()
                self._execute(jobs)
                break
            self._execute(jobs)  # type: ignore[arg-type]
        self._fail_waiting()

    def _gather(self, first: _Job[R]) -> list[_Job[R] | None]:
        """`first` plus whatever arrives until the batch is full or `max_wait_s` has passed."""
        jobs: list[_Job[R] | None] = [first]
        size = len(first.queries)
        deadline = time.monotonic() + (self.max_wait_s if self._together else 0.0)
        while size < self.max_queries:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            jobs.append(job)
            if job is None:
                break
            size += len(job.queries)
        return jobs

    def _execute(self, jobs: list[_Job[R]]) -> None:
        # A caller that gave up (a cancelled await) is dropped here; from now on its future cannot be cancelled.
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        queries = [q for job in jobs for q in job.queries]
        k = max(job.k for job in jobs)
        try:
            results = self._work(queries, k)
        except Exception as e:  # noqa: BLE001 - handed to every caller of this batch, raised there
            for job in jobs:
                job.future.set_exception(e)
            return
        self._together = len(jobs) > 1
        self.stats.batches += 1
        self.stats.requests += len(jobs)
        self.stats.queries += len(queries)
        self.stats.largest = max(self.stats.largest, len(queries))
        start = 0
        for job in jobs:
            mine = results[start:start + len(job.queries)]
            start += len(job.queries)
            job.future.set_result([r[:job.k] if isinstance(r, list) else r for r in mine])

    def _fail_waiting(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(RetrievalError("the dense retriever is closed"))
