"""The journal: append-only JSONL files that hold a run's finished rollouts and in-flight turns.

`journal.jsonl` has one line per finished rollout; `turns.jsonl` one line per finished turn of a
conversation still in flight, so a killed run continues each conversation from its last turn.
A rollout counts only once its line is written and flushed. Lines are read back by offset: memory
holds the index, not the results, and the journal's index is one 8-byte offset per rollout the
input owes, in an array by the rollout's slot (see `run.items`), not a dict. Every line carries its
key and the record format, and every read is checked: a torn last line is cut, an unreadable line
elsewhere is skipped and reported with its line number (its rollout is generated again; nothing
after it is lost), a record of another format is refused, and `get` fails rather than return
another key's record. One process writes a journal at a time (the run's lock), so offsets never
go stale.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import orjson

from hfdistill.core.atomic import atomic_path
from hfdistill.core.errors import JournalError
from hfdistill.core.records import RolloutResult

__all__ = ["FORMAT", "Checkpoints", "Journal", "Key", "RolloutRecord", "SlotMap", "TurnRecord", "decode"]

log = logging.getLogger(__name__)

FORMAT = 2  # of records and results; 1 was hfdistill 0.1's (keys by input position, no version)
Key = tuple[str, int]  # (item id: the question's content and occurrence, rollout index)
_FSYNC_SECONDS = 5.0


@dataclass(frozen=True)
class RolloutRecord:
    """A finished rollout: what it produced and which teacher model and protocol made it."""

    key: Key
    question: str
    model: str | None
    protocol: str | None
    result: RolloutResult

    def encode(self) -> dict[str, Any]:
        return {"v": FORMAT, "t": "rollout", "k": self.key[0], "r": self.key[1], "q": self.question,
                "m": self.model, "p": self.protocol, "result": self.result.to_json()}


@dataclass(frozen=True)
class TurnRecord:
    """One finished turn (`turn` counts from 1) of a conversation still in flight."""

    key: Key
    model: str | None
    protocol: str | None
    turn: int
    step: dict[str, Any]

    def encode(self) -> dict[str, Any]:
        return {"v": FORMAT, "t": "turn", "k": self.key[0], "r": self.key[1], "m": self.model,
                "p": self.protocol, "n": self.turn, "step": self.step}


class SlotMap(Protocol):
    """The rollouts a run owes, numbered 0 .. len - 1 (`run.items.RolloutSlots`)."""

    def __len__(self) -> int: ...

    def slot_of(self, key: Key) -> int | None: ...

    def key_of(self, slot: int) -> Key: ...


class IncompatibleRecord(ValueError):
    """A well-formed record of another journal format."""


def decode(line: bytes) -> RolloutRecord | TurnRecord:
    """Parse and validate one journal line; ValueError says what is wrong with it."""
    obj = orjson.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if obj.get("v") != FORMAT:
        raise IncompatibleRecord(f"format {obj.get('v', 1)!r}")
    key = (_typed(obj, "k", str), _typed(obj, "r", int))
    model, protocol = _optional_str(obj, "m"), _optional_str(obj, "p")
    if obj.get("t") == "rollout":
        return RolloutRecord(key, _typed(obj, "q", str), model, protocol, RolloutResult.from_json(obj.get("result")))
    if obj.get("t") == "turn":
        return TurnRecord(key, model, protocol, _typed(obj, "n", int), _typed(obj, "step", dict))
    raise ValueError(f"unknown record type {obj.get('t')!r}")


def _typed(obj: dict[str, Any], name: str, kind: type) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"field {name!r} is not a {kind.__name__}")
    return value


def _optional_str(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"field {name!r} is not a string")
    return value


class _Log:
    """An append-only JSONL file of records, scanned and validated on open, read back by offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bad_lines: list[int] = []
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._size = self._scan()
            self._open()
        except OSError as e:
            raise JournalError(f"cannot use the run journal {path} ({e.strerror or e}); check the output "
                               "directory is writable") from None
        self._last_sync = time.monotonic()
        if self.bad_lines:
            shown = ", ".join(map(str, self.bad_lines[:10])) + (" …" if len(self.bad_lines) > 10 else "")
            log.warning("journal %s: skipped %d unreadable record(s) at line %s; those rollouts are generated "
                        "again", path, len(self.bad_lines), shown)

    def _scan(self) -> int:
        if not self.path.exists():
            return 0
        offset = 0
        with open(self.path, "rb") as f:
            for number, line in enumerate(iter(f.readline, b""), start=1):
                if not line.endswith(b"\n"):  # torn by a kill mid-write: only ever the last line
                    log.warning("journal %s: cutting a torn last record (%d bytes)", self.path, len(line))
                    os.truncate(self.path, offset)
                    break
                self._index_line(line, offset, number)
                offset += len(line)
        return offset

    def _open(self) -> None:
        self._writer: BinaryIO | None = open(self.path, "ab")  # noqa: SIM115 - lives as long as the log
        self._reader: BinaryIO | None = open(self.path, "rb")  # noqa: SIM115

    def _index_line(self, line: bytes, offset: int, number: int) -> None:
        try:
            record = decode(line)
        except IncompatibleRecord as e:
            raise JournalError(f"{self.path} line {number} was written by another hfdistill version (journal "
                               f"{e}, this version reads format {FORMAT}); finish that run with the version that "
                               "started it, or pass --overwrite to start over") from None
        except (ValueError, UnicodeDecodeError):
            self.bad_lines.append(number)
            return
        if not isinstance(record, self.kind):
            self.bad_lines.append(number)
            return
        self._add(record, offset)

    kind: type[RolloutRecord] | type[TurnRecord]

    def _add(self, record: Any, offset: int) -> None:
        raise NotImplementedError  # each log indexes its own kind of record

    def _write(self, record: RolloutRecord | TurnRecord) -> int:
        line = orjson.dumps(record.encode()) + b"\n"
        offset = self._size
        try:
            if self._writer is None:  # compacted away when it held nothing
                self._open()
            assert self._writer is not None
            self._writer.write(line)
            self._writer.flush()  # in the OS after this: survives SIGKILL of this process
            if time.monotonic() - self._last_sync > _FSYNC_SECONDS:
                os.fsync(self._writer.fileno())  # and, every few seconds, a power cut
                self._last_sync = time.monotonic()
        except OSError as e:
            raise JournalError(f"cannot write the run journal {self.path} ({e.strerror or e}); free disk "
                               "space, then rerun the same command to resume") from None
        self._size += len(line)
        return offset

    def _read(self, offset: int) -> RolloutRecord | TurnRecord:
        assert self._reader is not None
        self._reader.seek(offset)
        line = self._reader.readline()
        try:
            return decode(line)
        except (ValueError, UnicodeDecodeError) as e:
            raise JournalError(f"journal {self.path} changed under this run at byte {offset} ({e}); another "
                               "program wrote to it: rerun the same command to rebuild its index") from None

    def close(self) -> None:
        if self._writer is not None and not self._writer.closed:
            self._writer.flush()
            os.fsync(self._writer.fileno())
            self._writer.close()
        if self._reader is not None:
            self._reader.close()


class Journal(_Log):
    """Finished rollouts by slot, durable across crashes; a later record of a key replaces an earlier one.

    Only the rollouts `slots` owes are indexed: a record of another input's question (a run with more
    samples, a longer input) stays in the file, unread, for the run that owes it.
    """

    kind = RolloutRecord

    def __init__(self, path: str | Path, slots: SlotMap) -> None:
        self.slots = slots
        self._offsets = np.full(len(slots), -1, np.int64)
        self._count = 0
        super().__init__(Path(path))

    def _add(self, record: RolloutRecord, offset: int) -> None:
        slot = self.slots.slot_of(record.key)
        if slot is not None:
            self._set(slot, offset)

    def _set(self, slot: int, offset: int) -> None:
        self._count += int(self._offsets[slot] < 0)
        self._offsets[slot] = offset

    def __len__(self) -> int:
        """Rollouts of this input the journal holds."""
        return self._count

    def has(self, slot: int) -> bool:
        return bool(self._offsets[slot] >= 0)

    def recorded(self) -> np.ndarray:
        """A bool per slot: the journal holds that rollout."""
        return self._offsets >= 0

    def get(self, slot: int) -> RolloutRecord:
        """The record of `slot`'s rollout; a JournalError if the line there is not that rollout's."""
        key = self.slots.key_of(slot)
        if self._offsets[slot] < 0:
            raise KeyError(key)
        record = self._read(int(self._offsets[slot]))
        if not isinstance(record, RolloutRecord) or record.key != key:
            raise JournalError(f"journal {self.path} holds {record.key} where {key} was recorded; another program "
                               "wrote to it: rerun the same command to rebuild its index")
        return record

    def append(self, slot: int, record: RolloutRecord) -> None:
        """Record `slot`'s rollout (whose key `record` carries)."""
        if record.key != self.slots.key_of(slot):
            raise ValueError(f"the record of {record.key} is not the rollout of slot {slot}")
        self._set(slot, self._write(record))


class Checkpoints(_Log):
    """Finished turns of conversations in flight, by rollout key, in turn order.

    Kept small: `compact` rewrites the file with the turns of unfinished rollouts only (at most
    the window's worth), and `discard` forgets a rollout's turns once it is journaled.
    """

    kind = TurnRecord
    _COMPACT_BYTES = 64 << 20

    def __init__(self, path: str | Path) -> None:
        self._turns: dict[Key, dict[int, int]] = {}
        self._live_bytes = 0
        super().__init__(Path(path))

    def _add(self, record: TurnRecord, offset: int) -> None:
        self._turns.setdefault(record.key, {})[record.turn] = offset

    def steps(self, key: Key) -> list[TurnRecord]:
        """The recorded turns of `key` from turn 1 on, stopping at the first gap (a skipped line)."""
        offsets = self._turns.get(key, {})
        out: list[TurnRecord] = []
        while len(out) + 1 in offsets:
            record = self._read(offsets[len(out) + 1])
            if not isinstance(record, TurnRecord) or record.key != key:
                raise JournalError(f"{self.path} changed under this run; rerun the same command")
            out.append(record)
        return out

    def append(self, record: TurnRecord) -> None:
        self._turns.setdefault(record.key, {})[record.turn] = self._write(record)
        if self._size > self._COMPACT_BYTES and self._size > 4 * self._live_bytes:
            self.compact()

    def discard(self, key: Key) -> None:
        self._turns.pop(key, None)

    def keep_only(self, unfinished: Callable[[Key], bool]) -> None:
        """Forget the turns of every rollout that is not `unfinished` (journaled, or not owed)."""
        for key in [k for k in self._turns if not unfinished(k)]:
            del self._turns[key]

    def compact(self) -> None:
        """Rewrite the file with only the turns still needed; delete it when there are none."""
        live = [self._read(offset) for turns in self._turns.values() for offset in turns.values()]
        self.close()
        if not live:
            self.path.unlink(missing_ok=True)
        else:
            with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
                for record in live:
                    f.write(orjson.dumps(record.encode()) + b"\n")
        self._turns.clear()
        self.bad_lines = []
        self._size = self._scan()
        self._live_bytes = self._size
        self._writer = self._reader = None
        if live:
            self._open()
