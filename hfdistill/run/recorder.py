"""Where a distiller reports its rollouts: the `Recorder` seam, and the in-memory one `Dataset.map` uses.

`Distiller` runs rollouts and reports every event (started, a finished turn, finished, failed,
skipped) to a recorder; it keeps no account of its own. The in-memory `Collector` turns finished
rollouts into rows for `Dataset.map` and lists failures; `generate`'s `Run` (see `run.account`) journals
them instead, and hands back what an earlier attempt left so a rerun resumes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from hfdistill.core.records import RolloutResult
from hfdistill.core.rollout import TurnStep
from hfdistill.core.types import RolloutJob
from hfdistill.curation.rows import curated_row

__all__ = ["Collector", "Prior", "Recorder", "failure_entry", "skip_entry", "usable"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prior:
    """What an earlier attempt left of a rollout: its result, or the turns of its unfinished conversation."""

    model: str | None
    protocol: str | None
    result: RolloutResult | None = None
    steps: tuple[TurnStep, ...] = ()


def usable(prior: Prior | None, model: str | None, protocol: str | None) -> Prior | None:
    """What an earlier attempt left, if it is worth continuing with this teacher (`model`, speaking
    `protocol`): a result it made, or turns it made in this protocol (turns sent in the other protocol
    cannot be continued, so that conversation starts over). Both engines decide with this."""
    if prior is None:
        return None
    if prior.model != model:
        log.warning("a recorded rollout was made by teacher %s, not %s; generating it again", prior.model, model)
        return None
    if prior.result is None and prior.protocol != protocol:
        return None
    return prior


class Recorder(Protocol):
    """The events of a distiller's rollouts; `finished` returns the output row to emit, if any."""

    def prior(self, job: RolloutJob) -> Prior | None: ...

    def started(self, job: RolloutJob) -> None: ...

    def turn(self, job: RolloutJob, number: int, step: TurnStep, *, model: str | None,
             protocol: str | None) -> None: ...

    def finished(self, job: RolloutJob, result: RolloutResult, *, model: str | None, protocol: str | None,
                 reused: bool) -> dict[str, Any] | None: ...

    def failed(self, job: RolloutJob, cause: str, turn: int, error: str) -> None: ...

    def skipped(self, job: RolloutJob) -> None: ...


@dataclass
class Collector:
    """The recorder of a bare `Dataset.map`: finished rollouts become rows, failures and skips are listed."""

    tools: list[dict[str, Any]]
    failures: list[dict[str, Any]] = field(default_factory=list)
    skipped_rows: list[dict[str, Any]] = field(default_factory=list)
    judge_spec: str | None = None  # whose verdicts fill judge_correct

    def prior(self, job: RolloutJob) -> Prior | None:
        return None

    def started(self, job: RolloutJob) -> None:
        """Nothing to count: `Dataset.map` shows its own progress."""

    def turn(self, job: RolloutJob, number: int, step: TurnStep, *, model: str | None,
             protocol: str | None) -> None:
        """Turns are not kept: a bare map has no journal to resume from."""

    def finished(self, job: RolloutJob, result: RolloutResult, *, model: str | None, protocol: str | None,
                 reused: bool) -> dict[str, Any]:
        return curated_row(result, question=job.question, golden_answers=job.golden_answers, tools=self.tools,
                         extra_info=job.extra_info, input_index=job.input_index, rollout_index=job.rollout_index,
                         judge_spec=self.judge_spec)

    def failed(self, job: RolloutJob, cause: str, turn: int, error: str) -> None:
        self.failures.append(failure_entry(job, cause, turn, error))

    def skipped(self, job: RolloutJob) -> None:
        self.skipped_rows.append(skip_entry(job))


def failure_entry(job: RolloutJob, cause: str, turn: int, error: str) -> dict[str, Any]:
    """A line of the failures file: which rollout, how far it got, and why it failed."""
    return {"input_index": job.input_index, "rollout_index": job.rollout_index, "question": job.question,
            "cause": cause, "turn": turn, "error": error}


def skip_entry(job: RolloutJob) -> dict[str, Any]:
    """A line of the skipped file: an input row that was never sent to the teacher, and why."""
    return {"input_index": job.input_index, "reason": "blank question",
            "detail": "the row has no question text; it was not sent to the teacher"}
