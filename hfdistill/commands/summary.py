"""The summary `generate` prints when a run ends, and the yield `curate` prints: what was written, what
it cost, what failed, and what curation kept (pure)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hfdistill.curation.funnel import funnel_lines
from hfdistill.run.progress import format_duration
from hfdistill.run.record import GenerationRecord

if TYPE_CHECKING:
    from hfdistill.commands.generate import GenerateResult

__all__ = ["summary_lines", "yield_lines"]


def summary_lines(result: GenerateResult) -> list[str]:
    s, record = result.stats, result.record
    lines = [f"[hfdistill] done in {format_duration(s.wall_seconds)}: {s.rows} rollouts finished, "
             f"{result.kept_rows} kept (--keep {record.run_options.keep}) and written to {result.output}",
             f"generated {s.rollouts_done}, resumed from the journal {s.rollouts_reused}, "
             f"skipped questions {s.questions_skipped} (blank)"]
    if sum(result.held_back.values()):
        held = ", ".join(f"{k} {v}" for k, v in result.held_back.items() if v)
        lines.append(f"held back: {held} (--keep-malformed writes them)")
    reasons = ", ".join(f"{k} {v}" for k, v in s.stop_reasons.most_common()) or "none"
    lines += [f"stop reasons: {reasons}",
              f"mean assistant turns {s.mean(s.turns):.2f}, mean searches {s.mean(s.searches):.2f}, "
              f"tool-call errors seen by the model {s.tool_errors}",
              f"tokens: prompt {s.prompt_tokens:,}, completion {s.completion_tokens:,}"]
    if set(s.tool_calls) - {"search"}:
        lines.append("tool calls: " + ", ".join(f"{k} {v:,}" for k, v in s.tool_calls.most_common()))
    per_endpoint = ", ".join(f"{k} {v:,}" for k, v in sorted(s.calls_by_endpoint.items()))
    lines.append(f"teacher calls {s.teacher_calls:,}" + (f" ({per_endpoint})" if len(s.calls_by_endpoint) > 1 else "")
                 + f", retried {s.teacher_retries:,}")
    if s.accuracy is not None:
        lines.append(f"answered {s.answered}, exact match {s.correct}/{s.scored} = {s.accuracy:.3f}")
    lines += yield_lines(record)
    if not result.complete:
        causes = ", ".join(f"{k} {v}" for k, v in s.failures.most_common())
        lines += [f"failed {s.rollouts_failed} ({causes or 'none'}) -> {result.failures}",
                  "the run is incomplete: rerun the same command to retry the failed rollouts (and judgements)"]
    return [lines[0], *(f"  {line}" for line in lines[1:])]


def yield_lines(record: GenerationRecord) -> list[str]:
    """The judge's calls and the yield funnel, from a file's record."""
    out = []
    judge = record.judge
    if judge is not None and judge.calls is not None:
        out.append(f"judge {judge.model}: {judge.calls:,} calls, retried {judge.retries or 0:,}")
    if record.funnel is not None:
        out += ["yield:", *(f"  {line}" for line in funnel_lines(record.funnel))]
    return out
