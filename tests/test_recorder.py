"""The in-memory recorder of a bare `Dataset.map`: finished rollouts become rows, failures and skips are listed."""

from __future__ import annotations

from hfdistill.core.records import RolloutResult, Verdict
from hfdistill.core.rollout import TurnStep
from hfdistill.core.tools import search_tool_schema
from hfdistill.core.types import RolloutJob, Usage
from hfdistill.run.recorder import Collector, failure_entry, skip_entry

TOOLS = [search_tool_schema()]
JOB = RolloutJob(input_index=7, rollout_index=2, question="Capital of France?", golden_answers=("Paris",),
                 extra_info={"split": "dev"})


def _result(prediction: str = "Paris", stop_reason: str = "answer", verdict: Verdict | None = None) -> RolloutResult:
    answer = f"<answer>{prediction}</answer>" if prediction else "I am not sure"
    return RolloutResult([{"role": "user", "content": "Question: Capital of France?"},
                          {"role": "assistant", "content": f"<think>recall</think>\n{answer}"}],
                         stop_reason, assistant_turns=1, num_tool_calls=0, num_tool_errors=0, num_queries=0,
                         num_malformed_calls=0, usage=Usage(20, 6), prediction=prediction, verdict=verdict)


def test_a_finished_rollout_becomes_a_scored_row_of_its_input() -> None:
    row = Collector(TOOLS).finished(JOB, _result(), model="m", protocol="chat", reused=False)
    assert {k: row[k] for k in ("question", "golden_answers", "tools", "extra_info", "input_index",
                                "rollout_index", "prediction", "exact_match", "stop_reason", "usage")} == {
        "question": "Capital of France?", "golden_answers": ["Paris"], "tools": TOOLS, "extra_info": {"split": "dev"},
        "input_index": 7, "rollout_index": 2, "prediction": "Paris", "exact_match": True, "stop_reason": "answer",
        "usage": {"prompt_tokens": 20, "completion_tokens": 6}}
    assert row["quality_flags"] == [] and row["judge_correct"] is None and row["judge_rationale"] is None


def test_a_cut_rollout_without_an_answer_is_a_flagged_row() -> None:
    row = Collector(TOOLS).finished(JOB, _result("", "length"), model="m", protocol="chat", reused=False)
    assert row["quality_flags"] == ["length", "no_answer"] and row["exact_match"] is False


def test_the_verdict_of_the_named_judge_fills_judge_correct() -> None:
    verdict = Verdict(correct=False, rationale="wrong city", model="judge-m", spec="j1")
    judged = Collector(TOOLS, judge_spec="j1").finished(JOB, _result(verdict=verdict), model="m", protocol="chat",
                                                        reused=True)
    assert (judged["judge_correct"], judged["judge_rationale"]) == (False, "wrong city")
    other = Collector(TOOLS, judge_spec="j2").finished(JOB, _result(verdict=verdict), model="m", protocol="chat",
                                                       reused=True)
    assert other["judge_correct"] is None and other["judge_rationale"] is None


def test_failures_and_skips_are_listed_as_the_lines_of_their_files() -> None:
    collector = Collector(TOOLS)
    blank = RolloutJob(input_index=8, rollout_index=0, question="", golden_answers=())
    collector.failed(JOB, "http_503", 3, "teacher answered HTTP 503 (gave up after 5 attempts)")
    collector.skipped(blank)
    collector.failed(blank, "retrieval", 1, "connection refused")
    assert collector.failures == [
        {"input_index": 7, "rollout_index": 2, "question": "Capital of France?", "cause": "http_503", "turn": 3,
         "error": "teacher answered HTTP 503 (gave up after 5 attempts)"},
        failure_entry(blank, "retrieval", 1, "connection refused")]
    assert collector.skipped_rows == [skip_entry(blank)] == [
        {"input_index": 8, "reason": "blank question",
         "detail": "the row has no question text; it was not sent to the teacher"}]


def test_a_bare_map_has_nothing_to_resume_and_keeps_no_turns() -> None:
    collector = Collector(TOOLS)
    assert collector.prior(JOB) is None
    collector.started(JOB)
    collector.turn(JOB, 1, TurnStep((), ()), model="m", protocol="chat")
    assert collector.failures == [] and collector.skipped_rows == [] and collector.prior(JOB) is None
