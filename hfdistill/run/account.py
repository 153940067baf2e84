"""A run: one process's hold on an output, and the account of every rollout it owes.

`OutputLock` makes one process the owner of an output file, its run directories, failures and
skipped files (an OS-level lock, so a killed owner releases it); a second process refuses at once
and names the first. `Run` is the recorder `generate` hands to `Distiller.stream`: it journals
finished turns and rollouts, lists failures, answers what an earlier attempt left, and at the end
accounts for every rollout the input owes: finished, failed, or (never silently) lost.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import filelock
import numpy as np

from hfdistill.core.atomic import atomic_write_text
from hfdistill.core.errors import JournalError, RunLockedError
from hfdistill.core.records import RolloutResult, Verdict
from hfdistill.core.rollout import TurnStep
from hfdistill.core.types import RolloutJob
from hfdistill.run.failures import FailureLog
from hfdistill.run.identity import RunIdentity
from hfdistill.run.items import InputItems, RolloutSlots
from hfdistill.run.journal import Checkpoints, Journal, Key, RolloutRecord, TurnRecord
from hfdistill.run.progress import Monitor
from hfdistill.run.recorder import Prior, failure_entry

__all__ = ["Account", "OutputLock", "Run"]

log = logging.getLogger(__name__)


class OutputLock:
    """Exclusive ownership of an output file (and everything hfdistill keeps next to it) for one process."""

    def __init__(self, output: Path, command: str = "") -> None:
        self.output = output
        self.path = output.parent / ".hfdistill" / f"{output.name}.lock"
        self.owner = self.path.with_name(self.path.name + ".owner.json")
        self.command = command
        self._lock = filelock.FileLock(str(self.path), timeout=0)

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise RunLockedError(f"{self.output} is being written by {self._holder()}; wait for that run to "
                                 "finish (or stop it), then rerun this command: it resumes") from None
        atomic_write_text(self.owner, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                  "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                  "command": self.command}))
        return self

    def __exit__(self, *exc: object) -> None:
        self.owner.unlink(missing_ok=True)
        self._lock.release()

    def _holder(self) -> str:
        try:
            owner = json.loads(self.owner.read_text())
            return f"another hfdistill process (pid {owner['pid']} on {owner['host']}, since {owner['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another hfdistill process"


@dataclass
class Account:
    """Where every rollout the input owes ended up after a run."""

    finished: int = 0  # journaled and not failed in this run: these are the output's rollouts
    failed: int = 0  # failed in this run, lost ones included (their entries are in `Run.failures`)
    lost: int = 0  # neither finished nor failed: a bug; they are listed as failures, never dropped
    causes: Counter[str] = field(default_factory=Counter)  # failures by cause


class Run:
    """A run directory held by this process: its journal, in-flight turns and failures; a `Recorder`.

    Opening it (the constructor) creates the directory and reads the journal; use it as a context
    manager so that the journal is closed however the run ends. Its per-rollout state is arrays
    indexed by slot (see `run.items`): what it holds grows by a few bytes per question, not by
    Python objects.
    """

    def __init__(self, identity: RunIdentity, items: InputItems, num_rollouts: int, monitor: Monitor) -> None:
        self.identity = identity
        self.items = items
        self.num_rollouts = num_rollouts
        self.monitor = monitor
        self.slots = RolloutSlots(items, num_rollouts)
        self._failed = np.zeros(len(self.slots), bool)
        run_dir = identity.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "run.json", json.dumps({"fingerprint": identity.fingerprint,
                                                            "options": identity.options.to_json()}, indent=2))
        self.failures = FailureLog(run_dir / "failures.partial.jsonl")
        self.journal = Journal(run_dir / "journal.jsonl", self.slots)
        self.checkpoints = Checkpoints(run_dir / "turns.jsonl")
        self._drop_finished_turns()
        if len(self.journal):
            log.info("resuming: %d rollouts recorded in %s", len(self.journal), run_dir)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self._drop_finished_turns()
        self.checkpoints.close()
        self.journal.close()
        self.failures.close()

    def _drop_finished_turns(self) -> None:
        def unfinished(key: Key) -> bool:
            slot = self.slots.slot_of(key)
            return slot is not None and not self.journal.has(slot)

        self.checkpoints.keep_only(unfinished)
        self.checkpoints.compact()

    @property
    def pending(self) -> int:
        """Rollouts the input owes that the journal does not hold yet."""
        return int(np.count_nonzero(self.slots.owed() & ~self.journal.recorded()))

    def slot(self, job: RolloutJob) -> int:
        index = job.input_index
        if index is None or not 0 <= index < len(self.items) or self.items.item(index) is None:
            raise JournalError(f"input row {index} has no question; it cannot be recorded")
        return self.slots.slot(index, job.rollout_index)

    def key(self, job: RolloutJob) -> Key:
        return self.slots.key_of(self.slot(job))

    # ------------------------------------------------------------ the Recorder seam

    def prior(self, job: RolloutJob) -> Prior | None:
        slot = self.slot(job)
        if self.journal.has(slot):
            record = self.journal.get(slot)
            return Prior(record.model, record.protocol, result=record.result)
        key = self.slots.key_of(slot)
        turns = self.checkpoints.steps(key)
        if not turns:
            return None
        try:
            steps = tuple(TurnStep.from_dict(t.step) for t in turns)
        except (KeyError, TypeError, ValueError) as e:
            log.warning("the recorded turns of %s cannot be read (%s); starting that conversation over", key, e)
            return None
        return Prior(turns[-1].model, turns[-1].protocol, steps=steps)

    def started(self, job: RolloutJob) -> None:
        self.monitor.started()

    def turn(self, job: RolloutJob, number: int, step: TurnStep, *, model: str | None,
             protocol: str | None) -> None:
        self.checkpoints.append(TurnRecord(self.key(job), model, protocol, number, step.to_dict()))

    def finished(self, job: RolloutJob, result: RolloutResult, *, model: str | None, protocol: str | None,
                 reused: bool) -> None:
        if not reused:
            slot = self.slot(job)
            key = self.slots.key_of(slot)
            self.journal.append(slot, RolloutRecord(key, job.question, model, protocol, result))
            self.checkpoints.discard(key)
        self.monitor.finished(reused=reused)

    def amend(self, slot: int, verdict: Verdict) -> None:
        """Journal `slot`'s rollout again with the judge's `verdict`: the new record replaces the old one,
        so a later run reads the verdict and never asks again."""
        record = self.journal.get(slot)
        self.journal.append(slot, RolloutRecord(record.key, record.question, record.model, record.protocol,
                                                record.result.judged(verdict)))

    def failed(self, job: RolloutJob, cause: str, turn: int, error: str) -> None:
        slot = self.slot(job)
        self._failed[slot] = True
        self.failures.add(slot, failure_entry(job, cause, turn, error))
        self.monitor.failed(cause)

    def skipped(self, job: RolloutJob) -> None:
        self.monitor.skipped(self.num_rollouts)

    # ------------------------------------------------------------ the end

    def finished_slots(self) -> np.ndarray:
        """A bool per slot: a journaled result this run stands behind (a failure here overrides an older record)."""
        return self.journal.recorded() & ~self._failed

    def account(self, *, interrupted: bool) -> Account:
        """Every rollout the input owes: finished, failed or lost (lost ones join the failures)."""
        finished = self.finished_slots()
        lost = np.flatnonzero(self.slots.owed() & ~finished & ~self._failed) if not interrupted else ()
        for slot in lost:
            index, rollout = divmod(int(slot), self.num_rollouts)
            self.failures.add(int(slot), {
                "input_index": index, "rollout_index": rollout, "question": None, "cause": "lost", "turn": 0,
                "error": "neither finished nor failed (an hfdistill bug, please report); rerun the same command to "
                         "generate it"})
        if len(lost):
            log.error("%d rollouts were neither finished nor failed; they are listed as failures (cause 'lost') "
                      "and a rerun generates them", len(lost))
        return Account(finished=int(np.count_nonzero(finished)), failed=len(self.failures), lost=len(lost),
                       causes=Counter(self.failures.causes))
