"""Judging what is already journaled: rollouts made before a judge was configured (or that it failed on).

New rollouts are judged in the distiller's window, right after they finish. This pass covers the
rest of a run's journal before any new rollout starts: it asks the judge only, never the teacher,
and journals each verdict with its rollout.
"""

from __future__ import annotations

import asyncio
import logging

import datasets

from hfdistill.curation.judge import JUDGE_KEY, judgeable, stored_verdict
from hfdistill.distiller import Distiller
from hfdistill.errors import JudgeError
from hfdistill.journal import Key
from hfdistill.judge import JudgeItem, judge_many
from hfdistill.run import Run

__all__ = ["judge_journal"]

log = logging.getLogger(__name__)
_CHUNK = 512


def unjudged(distiller: Distiller, ds: datasets.Dataset, run: Run) -> list[tuple[Key, JudgeItem]]:
    """Journaled rollouts of this input that the configured judge has no verdict on and could judge."""
    assert distiller.plan is not None and run.journal is not None and distiller.judge_spec is not None
    plan, finished, spec = distiller.plan, run.finished_keys(), distiller.judge_spec
    todo: list[tuple[Key, JudgeItem]] = []
    for start in range(0, len(ds), _CHUNK):
        chunk = ds[start:start + _CHUNK]
        for offset in range(len(next(iter(chunk.values()), []))):
            item = run.items.ids[start + offset]
            keys = [(item, r) for r in range(distiller.config.num_rollouts) if (item, r) in finished]
            if item is None or not keys:
                continue
            row = {column: values[offset] for column, values in chunk.items()}
            golden = tuple(plan.answers_of(row))
            for key in keys:
                result = run.journal.get(key).result
                if stored_verdict(result, spec) is None and judgeable(result["prediction"], golden):
                    todo.append((key, JudgeItem(plan.question_of(row), result["prediction"], golden)))
    return todo


def judge_journal(distiller: Distiller, ds: datasets.Dataset, run: Run) -> int:
    """Judge every journaled rollout that lacks a verdict; returns how many were judged."""
    todo = unjudged(distiller, ds, run)
    if not todo:
        return 0
    log.info("judging %d recorded rollouts that have no verdict yet (no teacher call)", len(todo))
    return asyncio.run(_judge(distiller, run, todo))


async def _judge(distiller: Distiller, run: Run, todo: list[tuple[Key, JudgeItem]]) -> int:
    judge = distiller.new_judge()
    assert judge is not None and distiller.judge_spec is not None
    try:
        distiller.judge_model = await judge.prepare()
        verdicts = await judge_many(judge, [item for _, item in todo], distiller.config.window)
    finally:
        await judge.aclose()
    judged = 0
    for (key, _), verdict in zip(todo, verdicts, strict=True):
        if isinstance(verdict, JudgeError):
            continue
        run.amend(key, **{JUDGE_KEY: verdict.stored(distiller.judge_spec)})
        judged += 1
    if judged < len(todo):
        log.warning("the judge failed on %d of %d rollouts; they stay unjudged (judge_correct null) and a rerun "
                    "asks again", len(todo) - judged, len(todo))
    return judged
