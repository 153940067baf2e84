"""The journal: an append-only JSONL file with one line per finished rollout.

A rollout counts only once its line is written and flushed, so a run killed at any moment loses
at most the rollouts that were in flight. Lines are read back by offset, so memory holds only the
index, not the results. A torn last line (the kill landed mid-write) is cut off on open.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from hfdistill.errors import JournalError

__all__ = ["Journal"]

log = logging.getLogger(__name__)
Key = tuple[int, int]  # (input index, rollout index)
_FSYNC_SECONDS = 5.0


class Journal:
    """Finished rollouts by (input index, rollout index), durable across crashes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._index: dict[Key, int] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._scan()
            self._writer: BinaryIO = open(self.path, "ab")  # noqa: SIM115 - lives as long as the journal
            self._reader: BinaryIO = open(self.path, "rb")  # noqa: SIM115
        except OSError as e:
            raise JournalError(f"cannot use the run journal {self.path} ({e.strerror or e}); check the output "
                               "directory is writable") from None
        self._last_sync = time.monotonic()

    def _scan(self) -> None:
        if not self.path.exists():
            return
        good_end = 0
        with open(self.path, "rb") as f:
            for line in iter(f.readline, b""):
                if not line.endswith(b"\n"):
                    break  # torn by a kill mid-write
                try:
                    record = json.loads(line)
                    key = (int(record["i"]), int(record["r"]))
                except (ValueError, KeyError, TypeError):
                    break
                self._index[key] = good_end
                good_end += len(line)
        if good_end < self.path.stat().st_size:
            log.warning("journal %s: dropping a torn last record (%d bytes)", self.path,
                        self.path.stat().st_size - good_end)
            os.truncate(self.path, good_end)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: Key) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._index))

    def get(self, key: Key) -> dict[str, Any]:
        """The record for `key`: `q` (question), `m` (teacher model) and `result`."""
        self._reader.seek(self._index[key])
        return json.loads(self._reader.readline())

    def append(self, key: Key, question: str, model: str | None, result: dict[str, Any]) -> None:
        line = json.dumps({"i": key[0], "r": key[1], "q": question, "m": model, "result": result},
                          ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        try:
            offset = self._writer.tell()
            self._writer.write(line)
            self._writer.flush()  # in the OS after this: survives SIGKILL of this process
            if time.monotonic() - self._last_sync > _FSYNC_SECONDS:
                os.fsync(self._writer.fileno())  # and, every few seconds, a power cut
                self._last_sync = time.monotonic()
        except OSError as e:
            raise JournalError(f"cannot write the run journal {self.path} ({e.strerror or e}); free disk "
                               "space, then rerun the same command to resume") from None
        self._index[key] = offset

    def close(self) -> None:
        if not self._writer.closed:
            self._writer.flush()
            os.fsync(self._writer.fileno())
            self._writer.close()
        self._reader.close()
