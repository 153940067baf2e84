"""The turns of conversations in flight on a Ray cluster, kept off the workers so a lost node loses none.

`TurnStore` is plain Python; the Ray engine runs it as one actor on the driver's node. A worker
sends it the tool turns it finished and the calls it made, a few times a second (`put`). The driver
takes them as results come back (`take`): the turns into the run's checkpoint file, as a local run
writes them, the calls into the run's counts (so that those of an actor that dies later are counted
too). A task Ray retries elsewhere continues each conversation from the last turn the store holds
(`claim`) instead of from its first turn. A worker whose task was handed to another is no longer
heard: only the newest claimant of a rollout may add its turns, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Slot", "Taken", "TurnReport", "TurnStore"]

Slot = tuple[int, int]  # (input index, rollout index): a rollout's place in the input


@dataclass(frozen=True)
class TurnReport:
    """One finished tool turn of a rollout: its number (from 1) and `TurnStep.to_dict()`."""

    slot: Slot
    number: int
    step: dict[str, Any]
    model: str | None
    protocol: str | None


@dataclass(frozen=True)
class Taken:
    """What the driver takes: new turns, in the order they came, and the workers' reports of calls made."""

    turns: list[TurnReport]
    calls: list[dict[str, Any]]


@dataclass
class _Rollout:
    owner: str
    known: int  # turns the claimant was sent with its job (the driver's checkpoints hold them)
    turns: list[TurnReport] = field(default_factory=list)

    @property
    def last(self) -> int:
        return self.turns[-1].number if self.turns else self.known


class TurnStore:
    """Turns by rollout, the claimant of each rollout, and the turns the driver has not taken yet."""

    def __init__(self) -> None:
        self._rollouts: dict[Slot, _Rollout] = {}
        self._untaken: list[TurnReport] = []
        self._calls: list[dict[str, Any]] = []

    def claim(self, token: str, known: dict[Slot, int]) -> dict[Slot, list[TurnReport]]:
        """`token` now runs these rollouts, each sent with `known[slot]` turns; returns, by rollout, the
        later turns an earlier claimant made, to continue from."""
        later: dict[Slot, list[TurnReport]] = {}
        for slot, count in known.items():
            rollout = self._rollouts.get(slot)
            turns = [t for t in rollout.turns if t.number > count] if rollout else []
            self._rollouts[slot] = _Rollout(token, count, turns)
            if turns:
                later[slot] = turns
        return later

    def put(self, token: str, reports: list[TurnReport], calls: dict[str, Any] | None = None) -> int:
        """Keep each report whose rollout `token` runs and that is that rollout's next turn, and `calls`
        (made, whoever runs the rollouts now); returns how many reports were kept."""
        if calls is not None:
            self._calls.append(calls)
        kept = 0
        for report in reports:
            rollout = self._rollouts.get(report.slot)
            if rollout is None or rollout.owner != token or report.number != rollout.last + 1:
                continue
            rollout.turns.append(report)
            self._untaken.append(report)
            kept += 1
        return kept

    def take(self, recorded: list[Slot] | tuple[()] = ()) -> Taken:
        """The turns and calls kept since the last `take`, but the turns of the `recorded` rollouts, which
        are dropped (and any of their turns that still arrives is refused)."""
        for slot in recorded:
            self._rollouts.pop(slot, None)
        gone = set(recorded)
        taken = Taken([t for t in self._untaken if t.slot not in gone], self._calls)
        self._untaken, self._calls = [], []
        return taken
