"""A run: one process's hold on an output, and the account of every rollout it owes.

`OutputLock` makes one process the owner of an output file, its run directories, failures and
skipped files (an OS-level lock, so a killed owner releases it); a second process refuses at once
and names the first. `Run` is the recorder `generate` hands to `Distiller.map`: it journals
finished turns and rollouts, lists failures, answers what an earlier attempt left, and at the end
accounts for every rollout the input owes: finished, failed, or (never silently) lost.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock

from hfdistill.core.atomic import atomic_write_text
from hfdistill.core.errors import JournalError, RunLockedError
from hfdistill.core.records import RolloutResult, Verdict
from hfdistill.core.rollout import TurnStep
from hfdistill.core.types import RolloutJob
from hfdistill.run.identity import InputItems, RunIdentity
from hfdistill.run.journal import Checkpoints, Journal, Key, RolloutRecord, TurnRecord
from hfdistill.run.progress import Monitor
from hfdistill.run.recorder import Prior, failure_entry

__all__ = ["OutputLock", "Run"]

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
    failed: list[dict[str, Any]] = field(default_factory=list)
    lost: int = 0  # neither finished nor failed: a bug; they are listed as failures, never dropped


class Run:
    """A run directory held by this process: its journal, in-flight turns and failures; a `Recorder`.

    Opening it (the constructor) creates the directory and reads the journal; use it as a context
    manager so that the journal is closed however the run ends.
    """

    def __init__(self, identity: RunIdentity, items: InputItems, num_rollouts: int, monitor: Monitor) -> None:
        self.identity = identity
        self.items = items
        self.num_rollouts = num_rollouts
        self.monitor = monitor
        self.failures: list[dict[str, Any]] = []
        self._failed: set[Key] = set()
        run_dir = identity.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "run.json", json.dumps({"fingerprint": identity.fingerprint,
                                                            "options": identity.options.to_json()}, indent=2))
        self.journal = Journal(run_dir / "journal.jsonl")
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

    def _drop_finished_turns(self) -> None:
        self.checkpoints.keep_only({key for _, key in self.items.keys(self.num_rollouts) if key not in self.journal})
        self.checkpoints.compact()

    @property
    def pending(self) -> int:
        """Rollouts the input owes that the journal does not hold yet."""
        return sum(key not in self.journal for _, key in self.items.keys(self.num_rollouts))

    def key(self, job: RolloutJob) -> Key:
        item = self.items.ids[job.input_index] if job.input_index is not None else None
        if item is None:
            raise JournalError(f"input row {job.input_index} has no question; it cannot be recorded")
        return item, job.rollout_index

    # ------------------------------------------------------------ the Recorder seam

    def prior(self, job: RolloutJob) -> Prior | None:
        key = self.key(job)
        if key in self.journal:
            record = self.journal.get(key)
            return Prior(record.model, record.protocol, result=record.result)
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
        key = self.key(job)
        if not reused:
            self.journal.append(RolloutRecord(key, job.question, model, protocol, result))
            self.checkpoints.discard(key)
        self.monitor.finished(reused=reused)

    def amend(self, key: Key, verdict: Verdict) -> None:
        """Journal `key`'s rollout again with the judge's `verdict`: the new record replaces the old one,
        so a later run reads the verdict and never asks again."""
        record = self.journal.get(key)
        self.journal.append(RolloutRecord(key, record.question, record.model, record.protocol,
                                          record.result.judged(verdict)))

    def failed(self, job: RolloutJob, cause: str, turn: int, error: str) -> None:
        self._failed.add(self.key(job))
        self.failures.append(failure_entry(job, cause, turn, error))
        self.monitor.failed(cause)

    def skipped(self, job: RolloutJob) -> None:
        self.monitor.skipped(self.num_rollouts)

    # ------------------------------------------------------------ the end

    def finished_keys(self) -> set[Key]:
        """Keys whose journaled result this run stands behind (a failure here overrides an older record)."""
        return {key for _, key in self.items.keys(self.num_rollouts) if key in self.journal and key not in self._failed}

    def account(self, *, interrupted: bool) -> Account:
        """Every rollout the input owes: finished, failed or lost (lost ones join the failures)."""
        account = Account(failed=list(self.failures))
        for index, key in self.items.keys(self.num_rollouts):
            if key in self._failed:
                continue
            if key in self.journal:
                account.finished += 1
            elif not interrupted:
                account.lost += 1
                account.failed.append({"input_index": index, "rollout_index": key[1], "question": None,
                                       "cause": "lost", "turn": 0,
                                       "error": "neither finished nor failed (an hfdistill bug, please report); "
                                                "rerun the same command to generate it"})
        if account.lost:
            log.error("%d rollouts were neither finished nor failed; they are listed as failures (cause 'lost') "
                      "and a rerun generates them", account.lost)
        return account
