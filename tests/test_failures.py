"""The failure log: on disk as failures happen, read back by slot, never a list in memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from hfdistill.core.errors import JournalError
from hfdistill.run.failures import FailureLog


def _entry(index: int, rollout: int, cause: str) -> dict:
    return {"input_index": index, "rollout_index": rollout, "question": f"q{index}", "cause": cause, "turn": 1,
            "error": "é"}


def test_entries_come_back_by_slot_whatever_the_order_they_failed_in(tmp_path: Path) -> None:
    log = FailureLog(tmp_path / "failures.partial.jsonl")
    for slot, cause in ((7, "http_503"), (2, "max_turns"), (5, "http_503"), (0, "lost")):
        log.add(slot, _entry(slot // 2, slot % 2, cause))
    assert len(log) == 4 and log.causes == {"http_503": 2, "max_turns": 1, "lost": 1}
    assert [(e["input_index"], e["rollout_index"]) for e in log.entries()] == [(0, 0), (1, 0), (2, 1), (3, 1)]
    log.add(1, _entry(0, 1, "lost"))  # more after a read: appended, and read back in place
    assert [e["rollout_index"] for e in log.entries()][:2] == [0, 1]
    log.close()
    assert not (tmp_path / "failures.partial.jsonl").exists()


def test_no_failure_means_no_file(tmp_path: Path) -> None:
    log = FailureLog(tmp_path / "failures.partial.jsonl")
    assert list(log.entries()) == [] and len(log) == 0
    log.close()
    assert not (tmp_path / "failures.partial.jsonl").exists()


def test_a_log_that_cannot_be_written_says_so(tmp_path: Path) -> None:
    log = FailureLog(tmp_path / "missing" / "failures.partial.jsonl")
    with pytest.raises(JournalError, match="cannot write"):
        log.add(0, _entry(0, 0, "x"))
