"""Judging rollouts: one in the distiller's window, many at once, and what a run's journal holds unjudged.

New rollouts are judged in the distiller's window, right after they finish (`judge_result`), so the
verdict is journaled with the rollout. `judge_journal` covers the rest of a run's journal before
any new rollout starts (rollouts made before a judge was configured, or that it failed on): it asks
the judge only, never the teacher. `judge_many` serves `curate`. A judge that fails for good leaves
the rollout unjudged (counted); a later run asks again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import datasets

from hfdistill.core.errors import JudgeError
from hfdistill.judge.client import Judge
from hfdistill.judge.prompt import JUDGE_KEY, JudgePrompt, Verdict, judgeable, stored_verdict
from hfdistill.run.account import Run
from hfdistill.run.journal import Key

if TYPE_CHECKING:  # the distiller imports this module (its window judges new rollouts)
    from hfdistill.engines.distiller import Distiller

__all__ = ["JudgeItem", "judge_journal", "judge_many", "judge_result"]


log = logging.getLogger(__name__)
_CHUNK = 512


@dataclass(frozen=True)
class JudgeItem:
    """What one judgement needs."""

    question: str
    prediction: str
    golden_answers: tuple[str, ...]


async def ask(judge: Judge, prompt: JudgePrompt, item: JudgeItem) -> Verdict:
    """The judge's verdict on one item; JudgeError once retries are spent."""
    correct, rationale = await judge.verdict(prompt.render(item.question, item.prediction, item.golden_answers))
    return Verdict(correct, rationale, judge.model)


async def judge_result(judge: Judge, prompt: JudgePrompt, item: JudgeItem, result: dict[str, Any]) -> dict[str, Any]:
    """`result` with this judge's verdict stored in it, when there is something to judge and it has none."""
    if stored_verdict(result, prompt.spec) is not None or not judgeable(item.prediction, item.golden_answers):
        return result
    try:
        verdict = await ask(judge, prompt, item)
    except JudgeError as e:
        judge.stats.failed(e.cause)
        log.debug("the judge failed on %r: %s", item.question[:80], e)
        return result
    return {**result, JUDGE_KEY: verdict.stored(prompt.spec)}


async def judge_many(judge: Judge, prompt: JudgePrompt, items: Sequence[JudgeItem],
                     window: int) -> list[Verdict | JudgeError]:
    """Judge every item, `window` calls at a time; a failure is returned in its place, not raised."""
    slots = asyncio.Semaphore(window)

    async def one(item: JudgeItem) -> Verdict | JudgeError:
        async with slots:
            try:
                return await ask(judge, prompt, item)
            except JudgeError as e:
                judge.stats.failed(e.cause)
                return e

    return list(await asyncio.gather(*(one(item) for item in items)))


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
        await judge.prepare()  # fills in the run's judge model (shared)
        assert distiller.judge_prompt is not None
        verdicts = await judge_many(judge, distiller.judge_prompt, [item for _, item in todo], distiller.config.window)
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
