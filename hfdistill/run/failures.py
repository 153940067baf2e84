"""The failures of a run: on disk as they happen, written out in input order at the end.

A run whose teacher goes away fails every rollout it has left, so a list of failures in memory
would grow with the input. Each failure is a line of a scratch file in the run directory instead;
memory holds its slot and the line's offset (two 8-byte numbers in arrays, no Python object), enough
to write the failures file sorted by input row and rollout at the end.
"""

from __future__ import annotations

import array
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

from hfdistill.core.errors import JournalError

__all__ = ["FailureLog"]


class FailureLog:
    """Failure entries (`run.recorder.failure_entry`) by slot; `entries` reads them back in slot order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.causes: Counter[str] = Counter()
        self._slots = array.array("q")
        self._offsets = array.array("q")
        self._size = 0
        self._file: BinaryIO | None = None

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, slot: int, entry: dict[str, Any]) -> None:
        line = orjson.dumps(entry) + b"\n"
        try:
            if self._file is None:
                self._file = open(self.path, "w+b")  # noqa: SIM115 - lives as long as the log
            self._file.seek(self._size)
            self._file.write(line)
        except OSError as e:
            raise JournalError(f"cannot write {self.path} ({e.strerror or e}); free disk space, then rerun the "
                               "same command to resume") from None
        self._slots.append(slot)
        self._offsets.append(self._size)
        self._size += len(line)
        self.causes[str(entry.get("cause"))] += 1

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every entry, by slot (input row, then rollout); in the order added within a slot."""
        if self._file is None:
            return
        self._file.flush()
        order = np.argsort(np.array(self._slots, np.int64), kind="stable")
        offsets = np.array(self._offsets, np.int64)
        for i in order:
            self._file.seek(int(offsets[i]))
            yield orjson.loads(self._file.readline())

    def close(self) -> None:
        """Close and delete the scratch file (the failures file written from it is the record)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)
