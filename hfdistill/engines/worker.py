"""The Ray engine's worker: the rollout loop inside an actor, fed batches of jobs, answering with events.

It imports no Ray: Ray Data instantiates `RolloutWorker` once per actor of the pool and calls it
with batches of jobs (one JSON document per row). Each actor runs them with its own `Distiller`,
so with its own window and its own teacher clients over every endpoint (least-outstanding routing
and stickiness per actor), and answers one event per job: the finished result, or the failure with
the turns it made, so that the next run continues that conversation. The driver decodes the events
(`decode_event`). A few times a second, and before a batch's answer, the actor sends the run's turn
store (`engines.turns`) the tool turns it finished and the teacher and judge calls it made; a batch
first claims its rollouts there, continuing each from the last turn an earlier attempt made.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from hfdistill.cli.process import throughput_gc
from hfdistill.core.config import DistillConfig
from hfdistill.core.records import RolloutResult
from hfdistill.core.rollout import TurnStep
from hfdistill.core.types import RolloutJob
from hfdistill.engines.distiller import Distiller
from hfdistill.engines.ray_serve import Serving
from hfdistill.engines.turns import TurnReport
from hfdistill.judge.client import JudgeStats
from hfdistill.run.recorder import Prior
from hfdistill.teacher.client import TeacherStats
from hfdistill.teacher.lifecycle import ServerStates
from hfdistill.teacher.served import Served

__all__ = ["EVENT_COLUMN", "JOB_COLUMN", "Event", "RolloutWorker", "decode_event", "encode_job"]

JOB_COLUMN = "job"
EVENT_COLUMN = "event"
_Slot = tuple[int, int]  # (input index, rollout index): a job's place in the input
# Turns and calls go to the store in one call per this many seconds: a call per turn costs more CPU than
# the turn (Ray's task submission), and a node lost in between loses only that last fraction.
_SEND_SECONDS = 0.25
_BOARD_TICKS = 4  # the servers' states are read every fourth send: a server's death is known within a second


def encode_job(job: RolloutJob, prior: Prior | None) -> str:
    """One row of the jobs dataset: what to ask, and the turns an earlier attempt already made."""
    return json.dumps({"i": job.input_index, "r": job.rollout_index, "q": job.question,
                       "g": list(job.golden_answers), "m": prior.model if prior else None,
                       "p": prior.protocol if prior else None,
                       "s": [s.to_dict() for s in prior.steps] if prior else []}, ensure_ascii=False)


def _decode_job(text: str) -> tuple[RolloutJob, Prior | None]:
    d = json.loads(text)
    job = RolloutJob(d["i"], d["r"], d["q"], tuple(d["g"]))
    steps = tuple(TurnStep.from_dict(s) for s in d["s"])
    return job, Prior(d["m"], d["p"], steps=steps) if steps else None


@dataclass(frozen=True)
class Event:
    """What a worker reports of a job: it finished or failed (`kind`)."""

    kind: str
    slot: _Slot = (-1, -1)
    model: str | None = None
    protocol: str | None = None
    result: RolloutResult | None = None
    cause: str = ""
    turn: int = 0
    error: str = ""
    turns: tuple[tuple[int, TurnStep], ...] = ()  # finished turns of a failed conversation


def decode_event(data: bytes) -> Event:
    d = orjson.loads(data)
    turns = tuple((int(n), TurnStep.from_dict(step)) for n, step in d.get("turns", ()))
    result = RolloutResult.from_json(d["result"]) if d.get("result") is not None else None
    return Event(d["kind"], (d["i"], d["r"]), d.get("m"), d.get("p"), result, d.get("cause", ""),
                 d.get("turn", 0), d.get("error", ""), turns)


class _Events:
    """The worker's recorder: priors sent by the driver in, one terminal event per job out."""

    def __init__(self, report: Callable[[TurnReport], None]) -> None:
        self.report = report
        self.priors: dict[_Slot, Prior | None] = {}
        self.turns: dict[_Slot, list[tuple[int, dict[str, Any]]]] = {}
        self.out: dict[_Slot, dict[str, Any]] = {}

    def prior(self, job: RolloutJob) -> Prior | None:
        return self.priors.pop(_slot(job), None)

    def started(self, job: RolloutJob) -> None:
        """The driver counts a job as started when it sends it."""

    def turn(self, job: RolloutJob, number: int, step: TurnStep, *, model: str | None,
             protocol: str | None) -> None:
        recorded = step.to_dict()
        self.turns.setdefault(_slot(job), []).append((number, recorded))
        self.report(TurnReport(_slot(job), number, recorded, model, protocol))

    def finished(self, job: RolloutJob, result: RolloutResult, *, model: str | None, protocol: str | None,
                 reused: bool) -> None:
        self.turns.pop(_slot(job), None)
        self.out[_slot(job)] = {"kind": "finished", "result": result.to_json(), "m": model, "p": protocol}

    def failed(self, job: RolloutJob, cause: str, turn: int, error: str) -> None:
        self.out[_slot(job)] = {"kind": "failed", "cause": cause, "turn": turn, "error": error,
                                "turns": self.turns.pop(_slot(job), [])}

    def skipped(self, job: RolloutJob) -> None:
        """The driver never sends a blank question."""


def _slot(job: RolloutJob) -> _Slot:
    assert job.input_index is not None
    return job.input_index, job.rollout_index


class RolloutWorker:
    """A Ray Data callable class: `async __call__` so that one actor runs many batches at once."""

    def __init__(self, config: DistillConfig, served: Served, turns: Any, serving: Serving | None = None) -> None:
        """`turns`: a handle to the run's `TurnStore` actor; `serving`: the servers hfdistill started on the cluster
        (--serve), whose states this actor follows, preferring its own node's."""
        # Ray starts a process for this actor and ends it with the actor: the process is ours, as the CLI's
        # is, and takes the CLI's collector settings (without them, collections cost a seventh of its CPU).
        self._process_settings = contextlib.ExitStack()
        self._process_settings.enter_context(throughput_gc())
        self.distiller = Distiller(config)
        self.distiller.assume_teacher(served)  # the driver probed the servers already
        self.serving, self.states = serving, ServerStates()
        if serving is not None:
            self.distiller.use_teacher(states=self.states, near=serving.near())
        self.distiller.corpus_digest()  # the embedded retriever loads its index now: a missing one fails here
        self.store = turns
        self.token = uuid.uuid4().hex  # this actor's claims in the store
        self._unsent: list[TurnReport] = []
        self._sender: asyncio.Task[None] | None = None
        self.events = _Events(self._unsent.append)
        self._reported = TeacherStats()
        self._judged = JudgeStats()

    async def __call__(self, batch: Mapping[str, Sequence[str]]) -> pa.Table:
        if self._sender is None:
            if self.serving is not None:
                await self._read_board()
            self._sender = asyncio.get_running_loop().create_task(self._send_periodically())
        jobs = []
        for text in batch[JOB_COLUMN]:
            job, prior = _decode_job(str(text))
            self.events.priors[_slot(job)] = prior
            jobs.append(job)
        await self._claim(jobs)
        await self.distiller.run_jobs(jobs, self.events)
        model, protocol = self.distiller.model, self.distiller.mode
        out = []
        for job in jobs:
            event = self.events.out.pop(_slot(job), None)
            if event is not None:  # (none only if the job was never run: the driver accounts for it)
                event.setdefault("m", model)
                event.setdefault("p", protocol)
                out.append(orjson.dumps({"i": job.input_index, "r": job.rollout_index, **event}))
        sent = self._send()
        if sent is not None:
            await sent  # in the store before the driver has this answer: its calls are counted by the end
        # An Arrow table as is: Ray Data would convert a dict of strings through numpy, a copy of every
        # result padded to the longest (a tenth of the actor's CPU).
        return pa.table({EVENT_COLUMN: pa.array(out, type=pa.binary())})

    async def _claim(self, jobs: list[RolloutJob]) -> None:
        """Claim the batch's rollouts in the store; continue each from the turns an earlier attempt made
        there (a task Ray retried after its node was lost), not only from those the driver sent."""
        priors = self.events.priors
        known = {_slot(j): len(p.steps) if (p := priors.get(_slot(j))) else 0 for j in jobs}
        later: dict[_Slot, list[TurnReport]] = await self.store.claim.remote(self.token, known)
        for slot, reports in later.items():
            prior, last = priors.get(slot), reports[-1]
            steps = (prior.steps if prior else ()) + tuple(TurnStep.from_dict(r.step) for r in reports)
            priors[slot] = Prior(last.model, last.protocol, steps=steps)

    async def _send_periodically(self) -> None:
        for tick in itertools.count(1):
            await asyncio.sleep(_SEND_SECONDS)
            self._send()  # not awaited: the rollouts go on at once
            if self.serving is not None and tick % _BOARD_TICKS == 0:
                await self._read_board()

    async def _read_board(self) -> None:
        """The servers' states as their hosts last told the board: which are being restarted, or gone."""
        assert self.serving is not None
        self.states.update(await self.serving.board.entries.remote())

    def _send(self) -> Any:
        """Send the store the turns finished and the calls made since the last send; returns the
        call's reference (awaitable), or None when there was nothing new."""
        stats, judge = self.distiller.teacher_stats, self.distiller.judge_stats
        if not self._unsent and stats == self._reported and judge == self._judged:
            return None
        reports = list(self._unsent)
        self._unsent.clear()  # (in place: the recorder appends to this list)
        return self.store.put.remote(self.token, reports, self._calls_since_last_report())

    def _calls_since_last_report(self) -> dict[str, Any]:
        now, last = self.distiller.teacher_stats, self._reported
        delta = {"calls": now.calls - last.calls, "retries": now.retries - last.retries,
                 "prompt_tokens": now.prompt_tokens - last.prompt_tokens,
                 "completion_tokens": now.completion_tokens - last.completion_tokens,
                 "by_endpoint": {k: v - last.by_endpoint.get(k, 0) for k, v in now.by_endpoint.items()}}
        self._reported = TeacherStats(now.calls, now.prompt_tokens, now.completion_tokens, now.retries,
                                      dict(now.by_endpoint))
        judge, judged = self.distiller.judge_stats, self._judged
        delta["judge"] = {"calls": judge.calls - judged.calls, "retries": judge.retries - judged.retries,
                          "failures": {k: v - judged.failures.get(k, 0) for k, v in judge.failures.items()}}
        self._judged = JudgeStats(judge.calls, judge.retries, dict(judge.failures))
        return delta
