"""The journal: durable, validated, read back by offset; bad lines cost only their own rollout."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

from hfdistill.core.errors import JournalError
from hfdistill.core.records import RolloutResult
from hfdistill.core.types import Usage
from hfdistill.run.inputs import plan_fields
from hfdistill.run.items import RolloutSlots, scan_items
from hfdistill.run.journal import Checkpoints, Journal, RolloutRecord, TurnRecord


def _slots(questions: int = 10, rollouts: int = 3) -> RolloutSlots:
    ds = datasets.Dataset.from_list([{"question": f"q{i}"} for i in range(questions)])
    return RolloutSlots(scan_items(ds, plan_fields(ds.features), with_golden=False), rollouts)


SLOTS = _slots()


def _slot(n: int, r: int = 0) -> int:
    return SLOTS.slot(n, r)


def _result(n: int) -> RolloutResult:
    return RolloutResult([{"role": "user", "content": f"héllo {n}"}], "answer", assistant_turns=1, num_tool_calls=0,
                         num_tool_errors=0, num_queries=0, num_malformed_calls=0, usage=Usage(3, 4),
                         prediction=str(n))


def _record(n: int, r: int = 0, slots: RolloutSlots = SLOTS) -> RolloutRecord:
    return RolloutRecord(slots.key_of(slots.slot(n, r)), f"q{n}", "m", "native", _result(n))


def _filled(path: Path, n: int) -> Journal:
    journal = Journal(path, SLOTS)
    for i in range(n):
        journal.append(_slot(i), _record(i))
    return journal


def _held(journal: Journal) -> list[int]:
    return np.flatnonzero(journal.recorded()).tolist()


def test_round_trip_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "run" / "journal.jsonl"
    _filled(path, 5).close()
    again = Journal(path, SLOTS)
    assert len(again) == 5 and again.has(_slot(3)) and not again.has(_slot(3, 1))
    assert again.get(_slot(4)) == _record(4)
    again.append(_slot(5, 2), _record(5, 2))  # appends after what was there
    assert again.get(_slot(5, 2)).question == "q5" and again.get(_slot(0)).question == "q0"
    with pytest.raises(ValueError, match="not the rollout of slot"):
        again.append(_slot(6), _record(7))
    again.close()


def test_records_of_rollouts_this_input_does_not_owe_stay_in_the_file_unindexed(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    _filled(path, 5).close()
    fewer = _slots(questions=3, rollouts=1)  # a run of the first three questions, one rollout each
    journal = Journal(path, fewer)
    assert len(journal) == 3 and _held(journal) == [0, 1, 2] and journal.get(2) == _record(2)
    journal.close()
    assert len(Journal(path, SLOTS)) == 5  # the larger run finds all of them again


def test_torn_last_line_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    _filled(path, 2).close()
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"v": 2, "t": "rollout", "k": "' + SLOTS.key_of(_slot(2))[0].encode()
                     + b'", "r": 0, "res')  # killed mid-write
    reopened = Journal(path, SLOTS)
    assert _held(reopened) == [_slot(0), _slot(1)]
    assert path.read_bytes() == whole
    reopened.append(_slot(2), _record(2))
    reopened.close()
    assert _held(Journal(path, SLOTS)) == [_slot(0), _slot(1), _slot(2)]


@pytest.mark.parametrize("bad", [
    pytest.param(b"\x00\x00 disk full garbage\n", id="garbage"),
    pytest.param(b'{"v": 2, "t": "rollout", "k": "' + SLOTS.key_of(9)[0].encode() + b'", "r": 0}\n', id="no-result"),
    pytest.param(b'{"v": 2, "t": "rollout", "k": 7, "r": 0, "q": "", "result": {}}\n', id="key-not-a-string"),
])
def test_a_bad_line_in_the_middle_costs_only_that_record(tmp_path: Path, bad: bytes,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "journal.jsonl"
    _filled(path, 4).close()
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([lines[0], lines[1], bad, lines[2], lines[3]]))
    before = path.read_bytes()
    journal = Journal(path, SLOTS)
    assert _held(journal) == [_slot(i) for i in range(4)]  # nothing after the bad line is lost
    assert journal.bad_lines == [3]
    assert "skipped 1 unreadable record(s) at line 3" in caplog.text
    assert path.read_bytes() == before  # skipped, not truncated
    assert journal.get(_slot(3)) == _record(3)
    journal.close()


def test_an_incompatible_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    old = {"i": 0, "r": 0, "q": "q", "m": "m", "result": _result(0).to_json()}  # 0.1's format
    path.write_text(json.dumps(old) + "\n")
    with pytest.raises(JournalError, match=r"another hfdistill version .*--overwrite"):
        Journal(path, SLOTS)


def test_get_refuses_a_record_of_another_key(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = _filled(path, 2)
    # another program rewrites the file under the open journal: offsets now point at other records
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[1] + lines[0])
    with pytest.raises(JournalError, match="another program wrote to it"):
        journal.get(_slot(0))
    journal.close()


def test_checkpoints_keep_turns_in_order_until_their_rollout_is_journaled(tmp_path: Path) -> None:
    path = tmp_path / "turns.jsonl"
    turns = Checkpoints(path)
    for n in (1, 2):
        for item in ("a.0", "b.0"):
            turns.append(TurnRecord((item, 0), "m", "text", n, {"n": n, "item": item}))
    turns.close()
    reopened = Checkpoints(path)
    assert [t.step for t in reopened.steps(("a.0", 0))] == [{"n": 1, "item": "a.0"}, {"n": 2, "item": "a.0"}]
    reopened.keep_only(lambda key: key == ("b.0", 0))  # a's rollout was journaled
    reopened.compact()
    assert reopened.steps(("a.0", 0)) == [] and len(reopened.steps(("b.0", 0))) == 2
    assert len(path.read_text().splitlines()) == 2  # the file holds only what is still needed
    reopened.keep_only(lambda key: False)
    reopened.compact()
    assert not path.exists()
    reopened.close()


def test_a_gap_in_the_turns_stops_the_resume_there(tmp_path: Path) -> None:
    path = tmp_path / "turns.jsonl"
    turns = Checkpoints(path)
    for n in (1, 2, 3):
        turns.append(TurnRecord(("a.0", 0), "m", "text", n, {"n": n}))
    turns.close()
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"garbage\n" + lines[2])  # turn 2 is unreadable
    assert [t.turn for t in Checkpoints(path).steps(("a.0", 0))] == [1]
