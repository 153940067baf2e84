"""Judging rollouts: one in a distiller's window, or many at once (a run's journal, a file's rows).

New rollouts are judged in the distiller's window, right after they finish (`judged`), so the
verdict is journaled with the rollout. `judge_all` serves the rest: the journaled rollouts a run
has no verdict on (made before a judge was configured, or that it failed on) and `curate`'s rows;
it asks the judge only, never the teacher. A judge that fails for good leaves the rollout
unjudged (counted in the judge's stats); a later run asks again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from hfdistill.core.config import JudgeConfig
from hfdistill.core.errors import JudgeError
from hfdistill.core.records import RolloutResult, Verdict
from hfdistill.core.retry import RetryPolicy
from hfdistill.judge.client import Judge, JudgeStats
from hfdistill.judge.prompt import JudgePrompt, judgeable, parse_verdict

__all__ = ["JudgeItem", "JudgeRun", "judge_all", "judged"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JudgeItem:
    """What one judgement needs."""

    question: str
    prediction: str
    golden_answers: tuple[str, ...]


async def _ask(judge: Judge, prompt: JudgePrompt, item: JudgeItem) -> Verdict:
    """The judge's verdict on one item; JudgeError once retries are spent."""
    correct, rationale = await judge.verdict(prompt.render(item.question, item.prediction, item.golden_answers))
    return Verdict(correct, rationale, judge.model, prompt.spec)


async def judged(judge: Judge, prompt: JudgePrompt, item: JudgeItem, result: RolloutResult) -> RolloutResult:
    """`result` with this judge's verdict, when there is something to judge and it has none yet."""
    if result.verdict_of(prompt.spec) is not None or not judgeable(item.prediction, item.golden_answers):
        return result
    try:
        verdict = await _ask(judge, prompt, item)
    except JudgeError as e:
        judge.stats.failed(e.cause)
        log.debug("the judge failed on %r: %s", item.question[:80], e)
        return result
    return result.judged(verdict)


@dataclass(frozen=True)
class JudgeRun:
    """What `judge_all` got: a verdict or the error in each item's place, and the judge's model id."""

    verdicts: list[Verdict | JudgeError]
    model: str | None


def judge_all(config: JudgeConfig, retry: RetryPolicy, prompt: JudgePrompt, items: Sequence[JudgeItem], *,
              window: int, stats: JudgeStats | None = None) -> JudgeRun:
    """Judge every item, `window` calls at a time, in an event loop of its own; a failure is returned in
    its item's place, not raised. The judge is probed first (an unreachable one raises)."""
    return asyncio.run(_judge_all(Judge(config, retry, parse_verdict, stats), prompt, items, window))


async def _judge_all(judge: Judge, prompt: JudgePrompt, items: Sequence[JudgeItem], window: int) -> JudgeRun:
    slots = asyncio.Semaphore(window)

    async def one(item: JudgeItem) -> Verdict | JudgeError:
        async with slots:
            try:
                return await _ask(judge, prompt, item)
            except JudgeError as e:
                judge.stats.failed(e.cause)
                return e

    try:
        model = await judge.prepare()
        verdicts = list(await asyncio.gather(*(one(item) for item in items)))
    finally:
        await judge.aclose()
    return JudgeRun(verdicts, model)
