"""The pure curation functions: quality flags on hand-made trajectories, the judge's reply, selection."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from hfdistill.core.errors import ConfigError
from hfdistill.curation.flags import FLAGS, _words, quality_flags
from hfdistill.curation.pipeline import CurationOptions, Curator
from hfdistill.curation.select import best_row, correctness, parse_keep, pass_rate, solved_kept
from hfdistill.judge.prompt import judgeable, parse_verdict


def _m(role: str, content: str = "", reasoning: str | None = None, call: list[str] | None = None) -> dict[str, Any]:
    calls = [{"id": "c", "type": "function", "function": {"name": "search",
                                                          "arguments": json.dumps({"query_list": call})}}]
    return {"role": role, "content": content, "reasoning_content": reasoning, "tool_calls": calls if call else None,
            "tool_call_id": "c" if role == "tool" else None, "name": None}


def _traj(*turns: dict[str, Any], stop: str = "answer", prediction: str = "Paris", errors: int = 0) -> dict[str, Any]:
    messages = [_m("system", "s"), _m("user", "Question: q"), *turns]
    return {"messages": messages, "stop_reason": stop, "prediction": prediction, "num_tool_errors": errors}


def _flags(traj: dict[str, Any], **options: Any) -> list[str]:
    """The flags of a hand-made trajectory, its malformed calls found in its messages (as in an output row)."""
    return quality_flags(traj["messages"], stop_reason=traj["stop_reason"], prediction=traj["prediction"],
                         num_tool_errors=traj["num_tool_errors"], num_malformed_calls=None, **options)


GOOD = [_m("assistant", "", "Let me look it up.", ["capital of France"]),
        _m("tool", "Query: capital of France\n[1] Paris: capital"), _m("assistant", "<answer>Paris</answer>", "ok")]
FINAL = _m("assistant", "<answer>Paris</answer>", "Done.")


@pytest.mark.parametrize(("trajectory", "flag"), [
    pytest.param(_traj(*GOOD[:2], _m("assistant", "Let me think about", "x"), stop="length", prediction=""),
                 "length", id="length"),
    pytest.param(_traj(_m("assistant", "I cannot tell.", "hmm"), stop="no_tool_call", prediction=""),
                 "no_answer", id="no-answer"),
    pytest.param(_traj(_m("assistant", "", "x", ["q"]), _m("tool", "Error: unknown tool 'browse'"), FINAL, errors=1),
                 "tool_error", id="tool-error"),
    pytest.param(_traj(_m("assistant", "<tool_call>{bad"), _m("user", "<tool_response>\nError: x\n</tool_response>"),
                       FINAL, errors=1), "malformed_call", id="malformed-call"),
    pytest.param(_traj(_m("assistant", "<think>I wonder <answer>Paris</answer>")), "unclosed_think",
                 id="unclosed-think"),
    pytest.param(_traj(_m("assistant", "<answer>Paris</answer> or <answer>Lyon</answer>", "x")),
                 "malformed_tags", id="two-answers"),
    pytest.param(_traj(_m("assistant", "<answer>Paris</answer>", "wait. hmm. wait, alternatively, wait")),
                 "repetition", id="hesitations"),
    pytest.param(_traj(_m("assistant", "", "a", ["same"]), _m("tool", "Query: same\n[1] A: a"),
                       _m("assistant", "", "b", ["same"]), _m("tool", "Query: same\n[1] A: a"), FINAL),
                 "repetition", id="same-search-twice"),
    pytest.param(_traj(_m("assistant", "<answer>Paris</answer>", "word " * 301)), "long_reasoning",
                 id="long-reasoning"),
    pytest.param(_traj(_m("assistant", "", "x", ["zzz"]), _m("tool", "Query: zzz\n(no results)"), FINAL),
                 "empty_observation", id="empty-seed-observation"),
    pytest.param(_traj(_m("assistant", "", "x", ["zzz"]), _m("tool", json.dumps({"result": ""})), FINAL),
                 "empty_observation", id="empty-verl-observation"),
])
def test_each_flag_on_a_trajectory_made_for_it(trajectory: dict[str, Any], flag: str) -> None:
    flags = _flags(trajectory)
    assert flag in flags
    assert flags == [f for f in FLAGS if f in flags]


def test_a_clean_trajectory_has_no_flag_and_the_word_budget_is_an_option() -> None:
    assert _flags(_traj(*GOOD)) == []
    assert _flags(_traj(*GOOD), max_step_words=2) == ["long_reasoning"]
    assert "repetition" not in _flags(_traj(_m("assistant", "<answer>Paris</answer>", "wait, hmm, wait")))


@pytest.mark.parametrize(("reasoning", "content", "flag", "flagged"), [
    pytest.param("Wait. HMMM. wait, Alternatively", "<answer>P</answer>", "repetition", True,
                 id="hesitations-any-case"),
    pytest.param("awaiting hmmph; waits, unalternatively wait", "<answer>P</answer>", "repetition", False,
                 id="hesitations-whole-words-only"),
    pytest.param(None, "<think>" + "a " * 301 + "</think><answer>P</answer>", "long_reasoning", True,
                 id="inline-think-over-budget"),
    pytest.param(None, "<think>" + "a " * 301, "long_reasoning", True, id="unclosed-think-over-budget"),
    pytest.param(None, "<think>" + "a " * 300 + "</think>" + "b " * 50 + "<answer>P</answer>", "long_reasoning",
                 False, id="budget-counts-the-think-only"),
])
def test_hesitations_and_the_word_budget_at_their_edges(reasoning: str | None, content: str, flag: str,
                                                          flagged: bool) -> None:
    assert (flag in _flags(_traj(_m("assistant", content, reasoning)))) is flagged


@pytest.mark.parametrize(("reply", "correct", "rationale"), [
    ('{"rationale": "same person", "judgement": "correct"}', True, "same person"),
    ('```json\n{"rationale": "no", "judgement": "Incorrect"}\n```', False, "no"),
    ('<think>the format is {"judgement": "correct"}</think>Sure: {"rationale": "r", "judgment": "incorrect"}',
     False, "r"),
    ("They name the same man.\n\nCorrect", True, "They name the same man."),
    ("Judgement: incorrect.", False, "Judgement:"),
    ("The prediction names another city, so it is not correct.", False,
     "The prediction names another city, so it is"),
])
def test_verdicts_are_parsed_from_json_or_a_last_word(reply: str, correct: bool, rationale: str) -> None:
    assert parse_verdict(reply) == (correct, rationale)


@pytest.mark.parametrize("reply", ["", "I am not sure.", '{"judgement": "maybe"}', "Correct or not, who knows"])
def test_a_reply_without_a_verdict_is_refused(reply: str) -> None:
    with pytest.raises(ValueError, match="no verdict"):
        parse_verdict(reply)


def test_only_a_prediction_with_golden_answers_is_judgeable() -> None:
    assert judgeable("Paris", ["Paris"]) and not judgeable(" ", ["Paris"]) and not judgeable("Paris", [])


def _row(i: int, correct: bool | None, calls: int, tokens: int, **extra: Any) -> dict[str, Any]:
    return {"question": "q", "golden_answers": ["x"], "prediction": "p" if correct is not False else "",
            "exact_match": correct, "judge_correct": correct, "stop_reason": "answer", "num_tool_calls": calls,
            "usage": {"completion_tokens": tokens}, "rollout_index": i, "messages": _traj(*GOOD)["messages"],
            "num_tool_errors": 0, "quality_flags": [], "input_index": 0, **extra}


def test_correctness_pass_rate_and_best_of_n() -> None:
    rows = [_row(0, True, 3, 10), _row(1, True, 1, 50), _row(2, True, 1, 20), _row(3, False, 0, 5), _row(4, None, 0, 1)]
    correct = [correctness(r, judged=True) for r in rows]
    assert correct == [True, True, True, False, None]
    assert pass_rate(correct) == 0.75  # over the four whose correctness is known
    assert best_row(rows, correct) == 2  # fewest searches, then fewest completion tokens
    assert best_row(rows[3:], correct[3:]) is None
    assert correctness({**rows[0], "golden_answers": []}, judged=False) is None


def test_keep_values_combine_and_unknown_ones_are_refused() -> None:
    assert parse_keep("correct,clean") == ("correct", "clean")
    assert parse_keep("all") == ("all",) and parse_keep("all,answered") == ("answered",)
    with pytest.raises(ConfigError, match="--keep takes one or more of"):
        parse_keep("correct,shiny")


def test_downsampling_is_reproducible_and_monotone() -> None:
    questions = [f"question {i}" for i in range(400)]
    kept = [q for q in questions if solved_kept(q, 0.25, seed=7)]
    assert 60 < len(kept) < 140
    assert kept == [q for q in questions if solved_kept(q, 0.25, seed=7)]
    assert set(kept) <= {q for q in questions if solved_kept(q, 0.5, seed=7)}
    assert kept != [q for q in questions if solved_kept(q, 0.25, seed=8)]


def test_curator_selects_the_best_clean_row_and_counts_the_funnel() -> None:
    curator = Curator(CurationOptions(keep=("clean",), select="best"), judged=True, correct_by="LLM judge j")
    rows = [_row(0, True, 2, 10), _row(1, True, 1, 10, messages=_traj(*GOOD[:2], FINAL, FINAL)["messages"]),
            _row(2, False, 0, 1)]
    kept = curator.group(rows)
    assert [r["rollout_index"] for r in kept] == [0]  # rollout 1 has fewer searches but answers twice: flagged
    assert [r["pass_rate"] for r in rows] == [2 / 3] * 3
    stages = dict(curator.funnel.stages())
    assert (stages["answered"], stages["correct"], stages["clean"], stages["selected"]) == (3, 2, 1, 1)


def test_options_are_checked_where_they_enter() -> None:
    with pytest.raises(ConfigError, match="--student-tokenizer"):
        CurationOptions(max_length=100)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        CurationOptions(downsample_solved=1.5)
    with pytest.raises(ConfigError, match="--select"):
        CurationOptions(select="worst")


@pytest.mark.parametrize("text", [
    "".join(map(chr, range(128))) * 2,  # every ASCII character: only [A-Za-z0-9_] make words
    "Wait -- the 1990s' co-founder (née Smith) wrote: snake_case, x2 & y_3!\n\ttab\x0bvt\x1cfs",
    "Straße café naïve 東京 — ١٢٣ and ascii",  # not ASCII: \w is Unicode's
    "",
])
def test_words_are_the_regex_word_runs(text: str) -> None:
    assert _words(text) == re.findall(r"\w+", text)
