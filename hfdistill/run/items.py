"""Each input row's content id, and each rollout's slot: a run's per-question bookkeeping, kept compact.

A rollout is recorded under its item id, `<content>.<occurrence>`: 20 hex digits of a digest of the
question (and golden answers, when a template shows them to the teacher) and the how-manieth
time that content occurs in the input (see `run.identity`). A run holds one id per input row for
its whole life, so the ids live in one numpy array of 15-byte keys (the digest's 10 bytes, the
occurrence, and a closing byte), not in a Python string per row: about 19 bytes a question with the
sort order that finds a row by its id. A rollout's slot is its place in the output order,
`input index * rollouts + rollout index`; the run's other per-rollout state (journal offsets,
failures) is arrays indexed by slot.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hfdistill.run.inputs import FieldPlan, InputRow, input_rows
from hfdistill.run.journal import Key

if TYPE_CHECKING:
    import datasets

__all__ = ["InputItems", "RolloutSlots", "scan_items"]

_DIGEST = 10  # bytes of the content digest in an id (20 hex digits)
_KEY = np.dtype(f"S{_DIGEST + 5}")  # digest, occurrence (4 bytes, big-endian), b"\x01": never b"" but for a blank
_MAX_OCCURRENCE = 2**32 - 1


@dataclass(frozen=True, eq=False)
class InputItems:
    """Each input row's item id (None for a blank question) and a digest of them all, in order."""

    keys: np.ndarray  # _KEY per input row; b"" for a blank question
    order: np.ndarray  # the rows sorted by key (blank ones first): finds a row by its id
    digest: str

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def blank_rows(self) -> np.ndarray:
        """A bool per input row: its question is blank (never sent to the teacher)."""
        return self.keys == b""

    @property
    def blank(self) -> int:
        return int(np.count_nonzero(self.blank_rows))

    def item(self, index: int) -> str | None:
        """The item id of input row `index`, None for a blank question."""
        key = bytes(self.keys[index])
        return _id(key) if key else None

    def index_of(self, item: str) -> int | None:
        """The input row whose id is `item`, None when no row of this input has it."""
        key = _key_of(item)
        if key is None:
            return None
        at = int(np.searchsorted(self.keys, np.array(key, dtype=_KEY), sorter=self.order))
        if at == len(self.order) or self.keys[self.order[at]] != key:
            return None
        return int(self.order[at])

    @classmethod
    def of(cls, rows: Iterable[InputRow], count: int, *, with_golden: bool) -> InputItems:
        """The items of `count` rows (`run.inputs.input_rows`), read once."""
        raw = np.zeros((count, _KEY.itemsize), np.uint8)
        blank = np.ones(count, bool)
        seen = 0
        for i, row in enumerate(rows):
            seen += 1
            if row.question:
                golden = list(row.golden_answers) if with_golden else []
                content = json.dumps([row.question, golden], ensure_ascii=False).encode()
                raw[i, :_DIGEST] = np.frombuffer(hashlib.sha256(content).digest()[:_DIGEST], np.uint8)
                blank[i] = False
        if seen != count:
            raise ValueError(f"expected {count} input rows, read {seen}")
        return cls._numbered(raw, blank)

    @classmethod
    def _numbered(cls, raw: np.ndarray, blank: np.ndarray) -> InputItems:
        """Number each content's occurrences in input order, and digest the ids."""
        contents = raw[:, :_DIGEST].copy().view(f"S{_DIGEST}").ravel()
        contents[blank] = b""
        order = np.argsort(contents, kind="stable")  # blank rows first; a content's rows in input order
        ordered = contents[order]
        starts = np.ones(len(order), bool)
        starts[1:] = ordered[1:] != ordered[:-1]
        first = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
        occurrence = np.empty(len(order), np.uint32)
        occurrence[order] = np.arange(len(order)) - first
        raw[:, _DIGEST:_DIGEST + 4] = occurrence.astype(">u4").view(np.uint8).reshape(-1, 4)
        raw[:, -1] = 1
        raw[blank] = 0
        keys = raw.view(_KEY).ravel()
        sha = hashlib.sha256()
        for key in keys:
            sha.update(f"{_id(bytes(key))}\n".encode() if key else b"-\n")
        small = np.int32 if len(order) < 2**31 else np.int64
        return cls(keys, order.astype(small), sha.hexdigest())


def scan_items(ds: datasets.Dataset, plan: FieldPlan, *, with_golden: bool) -> InputItems:
    """Read every row's question (and golden answers) once and give each row its content id."""
    return InputItems.of(input_rows(ds, plan), len(ds), with_golden=with_golden)


def _id(key: bytes) -> str:
    return f"{key[:_DIGEST].hex()}.{int.from_bytes(key[_DIGEST:_DIGEST + 4], 'big')}"


def _key_of(item: str) -> bytes | None:
    content, dot, occurrence = item.partition(".")
    if not dot or len(content) != 2 * _DIGEST or not occurrence.isdigit():
        return None
    try:
        digest = bytes.fromhex(content)
    except ValueError:
        return None
    number = int(occurrence)
    if number > _MAX_OCCURRENCE or str(number) != occurrence:
        return None
    return digest + number.to_bytes(4, "big") + b"\x01"


@dataclass(frozen=True, eq=False)
class RolloutSlots:
    """The rollouts an input owes, by slot: `input index * rollouts + rollout index` (the output order)."""

    items: InputItems
    rollouts: int

    def __len__(self) -> int:
        return len(self.items) * self.rollouts

    def slot(self, index: int, rollout: int) -> int:
        return index * self.rollouts + rollout

    def slot_of(self, key: Key) -> int | None:
        """The slot of the rollout `key`, None when this input does not owe it."""
        item, rollout = key
        index = self.items.index_of(item)
        if index is None or not 0 <= rollout < self.rollouts:
            return None
        return self.slot(index, rollout)

    def key_of(self, slot: int) -> Key:
        """The key a slot's rollout is journaled under (a slot of a blank question has none)."""
        index, rollout = divmod(slot, self.rollouts)
        item = self.items.item(index)
        if item is None:
            raise ValueError(f"input row {index} has no question; it owes no rollout")
        return item, rollout

    def owed(self) -> np.ndarray:
        """A bool per slot: the input owes that rollout (its question is not blank)."""
        return np.repeat(~self.items.blank_rows, self.rollouts)
