"""A run's account of every rollout, kept in arrays by slot: a few bytes per question, no Python object."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import datasets
import pytest

from hfdistill.core.config import DistillConfig
from hfdistill.core.records import RolloutResult
from hfdistill.core.types import RolloutJob, Usage
from hfdistill.run.account import Run
from hfdistill.run.identity import identify, rollout_options
from hfdistill.run.inputs import plan_fields
from hfdistill.run.items import scan_items
from hfdistill.run.progress import Monitor

RESULT = RolloutResult([{"role": "assistant", "content": "<answer>x</answer>"}], "answer", assistant_turns=1,
                       num_tool_calls=0, num_tool_errors=0, num_queries=0, num_malformed_calls=0, usage=Usage(1, 1),
                       prediction="x")


def _dataset(n: int, blank_every: int = 0) -> datasets.Dataset:
    return datasets.Dataset.from_list([{"question": "" if blank_every and i % blank_every == 0 else f"Q{i}?"}
                                       for i in range(n)])


def _open(tmp_path: Path, ds: datasets.Dataset, rollouts: int = 1) -> Run:
    identity = identify(rollout_options(DistillConfig(), templates={}, corpus=None), tmp_path / "o.parquet")
    items = scan_items(ds, plan_fields(ds.features), with_golden=False)
    return Run(identity, items, rollouts, Monitor(len(ds) * rollouts, enabled=False))


def _job(ds: datasets.Dataset, index: int, rollout: int = 0) -> RolloutJob:
    return RolloutJob(index, rollout, ds[index]["question"], ())


def test_the_account_says_where_every_rollout_went(tmp_path: Path) -> None:
    ds = _dataset(6, blank_every=4)  # rows 0 and 4 are blank
    with _open(tmp_path, ds, rollouts=2) as run:
        assert run.pending == 8
        for index, rollout in ((1, 0), (1, 1), (2, 0), (5, 1)):
            run.finished(_job(ds, index, rollout), RESULT, model="m", protocol="native", reused=False)
        run.failed(_job(ds, 3, 1), "http_503", 2, "gone")
        account = run.account(interrupted=False)
        assert (account.finished, account.failed, account.lost) == (4, 4, 3)  # (2,1), (3,0), (5,0) were lost
        assert account.causes == {"http_503": 1, "lost": 3}
        assert [(e["input_index"], e["rollout_index"], e["cause"]) for e in run.failures.entries()] == [
            (2, 1, "lost"), (3, 0, "lost"), (3, 1, "http_503"), (5, 0, "lost")]
    with _open(tmp_path, ds, rollouts=2) as again:  # the journal holds what finished; failures are this run's
        assert again.pending == 4 and again.account(interrupted=True).failed == 0


def test_a_blank_row_cannot_be_recorded(tmp_path: Path) -> None:
    ds = _dataset(3, blank_every=2)
    with _open(tmp_path, ds) as run, pytest.raises(Exception, match="has no question"):
        run.finished(_job(ds, 2), RESULT, model="m", protocol="native", reused=False)


def _held_by_a_resumed_run(tmp_path: Path, n: int) -> int:
    """Bytes of Python allocations a run over `n` journaled questions holds once open and accounted for."""
    ds = _dataset(n)
    with _open(tmp_path, ds) as run:
        for i in range(n):
            run.finished(_job(ds, i), RESULT, model="m", protocol="native", reused=False)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run = _open(tmp_path, ds)
        run.account(interrupted=False)
        run.finished_slots()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    run.__exit__(None, None, None)
    return held


def test_what_a_run_holds_grows_by_a_few_bytes_per_question_not_by_python_objects(tmp_path: Path) -> None:
    small, large = 1_000, 12_000
    per_question = (_held_by_a_resumed_run(tmp_path / "large", large)
                    - _held_by_a_resumed_run(tmp_path / "small", small)) / (large - small)
    # Ids (19 bytes), journal offsets (8) and failure flags (1) per question; a dict entry with a tuple key
    # and an int offset alone would be over 150 bytes.
    assert per_question < 48, f"{per_question:.0f} bytes per question"
