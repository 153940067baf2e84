"""The journal: durable, append-only, read back by offset, tolerant of a torn last line."""

from __future__ import annotations

from pathlib import Path

from hfdistill.journal import Journal


def _result(n: int) -> dict:
    return {"messages": [{"role": "user", "content": f"héllo {n}"}], "stop_reason": "answer"}


def test_round_trip_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "run" / "journal.jsonl"
    journal = Journal(path)
    for i in range(5):
        journal.append((i, 0), f"q{i}", "m", _result(i))
    assert (3, 0) in journal and (3, 1) not in journal
    assert journal.get((3, 0)) == {"i": 3, "r": 0, "q": "q3", "m": "m", "result": _result(3)}
    journal.close()
    again = Journal(path)
    assert len(again) == 5
    assert again.get((4, 0))["result"] == _result(4)
    again.append((5, 2), "q5", "m", _result(5))  # appends after what was there
    assert again.get((5, 2))["q"] == "q5" and again.get((0, 0))["q"] == "q0"
    again.close()


def test_torn_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    journal.append((0, 0), "q0", "m", _result(0))
    journal.append((1, 0), "q1", "m", _result(1))
    journal.close()
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"i": 2, "r": 0, "q": "q2", "res')  # killed mid-write
    reopened = Journal(path)
    assert list(reopened) == [(0, 0), (1, 0)]
    assert path.read_bytes() == whole  # cut back to the last whole line
    reopened.append((2, 0), "q2", "m", _result(2))
    reopened.close()
    assert list(Journal(path)) == [(0, 0), (1, 0), (2, 0)]


def test_a_rollout_is_recorded_again_later_wins(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    journal.append((0, 0), "old question", "m", _result(0))
    journal.append((0, 0), "new question", "m", _result(1))
    assert journal.get((0, 0))["q"] == "new question"
    journal.close()
