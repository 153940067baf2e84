"""End to end with an LLM judge on loopback: verdicts that differ from exact match, one notion of
"correct" for --keep / pass_rate / --select best, a judge that fails, and reruns that ask nobody."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from hfdistill.cli.main import main
from hfdistill.curation.funnel import stage_label
from hfdistill.publish.card import card_body, load_card_inputs
from hfdistill.publish.report import build_report
from tests.conftest import record_of
from tests.fake_judge import JUDGE_MODEL, FakeJudge
from tests.fakes import Answer, FakeRetriever, FakeTeacher, Search, Served

# question -> (golden answers, the teacher's rollouts: one script per rollout index)
PARIS, BERLIN, EIFFEL, ROME = ("What is the capital of France?", "What is the capital of Germany?",
                               "Who designed the Eiffel Tower?", "What is the capital of Italy?")
GOLDEN = {PARIS: ["Paris"], BERLIN: ["Berlin"], EIFFEL: ["Alexandre Gustave Eiffel"], ROME: ["Rome"]}


@pytest.fixture
def judge() -> Iterator[tuple[FakeJudge, Served]]:
    fake = FakeJudge()
    # exact match says yes, the judge says no; exact match says no, the judge says yes (bare last word)
    fake.verdicts = {"Berlin": "incorrect", "Gustave Eiffel": "bare:Correct", "Roma": "garbage"}
    served = Served(fake.app())
    yield fake, served
    served.close()


def _script(teacher: FakeTeacher) -> None:
    teacher.script(PARIS, Search(["capital of France"]), Answer("Paris"))  # both agree: correct
    teacher.script(BERLIN, Answer("Berlin"))
    teacher.script(EIFFEL, Search(["Eiffel Tower designer"]), Search(["Gustave Eiffel"]), Answer("Gustave Eiffel"))
    teacher.script(ROME, Answer("Roma"))


def _run(tmp_path: Path, teacher: Served, retriever: Served, judge: Served | None, *extra: str,
         out: str = "out.parquet") -> tuple[int, Path]:
    inp = tmp_path / "questions.jsonl"
    inp.write_text("".join(json.dumps({"question": q, "golden_answers": a}) + "\n" for q, a in GOLDEN.items()))
    args = ["generate", "--vllm_url", f"{teacher.url}/v1", "--retrieval_url", f"{retriever.url}/retrieve",
            "--input_file", str(inp), "--output_file", str(tmp_path / out), "--num-rollouts", "2",
            "--max_assistant_turns", "4", "--max-retries", "1", "--retry-backoff", "0", "-q", *extra]
    if judge is not None:
        args += ["--judge-url", f"{judge.url}/v1"]
    return main(args), tmp_path / out


def _rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def test_the_judge_decides_correctness_row_by_row(tmp_path: Path, teacher: tuple[FakeTeacher, Served],
                                                  retriever: tuple[FakeRetriever, Served],
                                                  judge: tuple[FakeJudge, Served]) -> None:
    _script(teacher[0])
    rc, out = _run(tmp_path, teacher[1], retriever[1], judge[1], "--judge-api-key", "sk-judge-secret")
    assert rc == 3  # the judge answered garbage on ROME's rollouts: kept unjudged, and the run says so
    assert "sk-judge-secret" not in json.dumps(record_of(out).to_json())  # the record (and the card) are public
    rows = _rows(out)
    by_q = {r["question"]: r for r in rows}
    assert len(rows) == 8
    assert [(q, by_q[q]["exact_match"], by_q[q]["judge_correct"]) for q in GOLDEN] == [
        (PARIS, True, True), (BERLIN, True, False), (EIFFEL, False, True), (ROME, False, None)]
    assert by_q[EIFFEL]["judge_rationale"].startswith("The prediction 'Gustave Eiffel' matches")
    assert [r["pass_rate"] for r in rows] == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, None, None]
    assert judge[0].calls == 2 + 2 + 2 + 2 * 2  # ROME's two rollouts: asked, retried once, given up
    record = record_of(out)
    assert record.funnel is not None and record.funnel.correct_by == f"LLM judge {JUDGE_MODEL}"
    assert record.funnel.judge_failed == 2 and not record.complete
    assert record.judge is not None and record.judge.model == JUDGE_MODEL


def test_keep_and_select_use_the_judge_and_reruns_ask_nobody(tmp_path: Path, teacher: tuple[FakeTeacher, Served],
                                                             retriever: tuple[FakeRetriever, Served],
                                                             judge: tuple[FakeJudge, Served]) -> None:
    _script(teacher[0])
    judge[0].verdicts.pop("Roma")  # a judge that works: "Roma" is not "Rome"
    assert _run(tmp_path, teacher[1], retriever[1], judge[1])[0] == 0
    calls = (teacher[0].chat_calls, judge[0].calls)

    rc, out = _run(tmp_path, teacher[1], retriever[1], judge[1], "--keep", "correct")
    assert rc == 0
    assert [(r["question"], r["rollout_index"]) for r in _rows(out)] == [(PARIS, 0), (PARIS, 1), (EIFFEL, 0),
                                                                          (EIFFEL, 1)]
    rc, out = _run(tmp_path, teacher[1], retriever[1], judge[1], "--select", "best")
    best = _rows(out)
    assert [(r["question"], r["rollout_index"], r["judge_correct"]) for r in best] == [(PARIS, 0, True),
                                                                                       (EIFFEL, 0, True)]
    assert (teacher[0].chat_calls, judge[0].calls) == calls  # every rollout and verdict came from the journal
    assert record_of(out).to_json()["funnel"]["stages"][-1] == {"stage": "selected", "count": 2, "of_rollouts": 0.25}


def test_a_rerun_with_a_judge_judges_what_was_journaled_without_one(tmp_path: Path,
                                                                    teacher: tuple[FakeTeacher, Served],
                                                                    retriever: tuple[FakeRetriever, Served],
                                                                    judge: tuple[FakeJudge, Served]) -> None:
    _script(teacher[0])
    judge[0].verdicts.pop("Roma")
    rc, out = _run(tmp_path, teacher[1], retriever[1], None)
    assert rc == 0 and all(r["judge_correct"] is None for r in _rows(out))
    assert record_of(out).correct_by == "exact match"
    teacher_calls = teacher[0].chat_calls
    assert _run(tmp_path, teacher[1], retriever[1], judge[1])[0] == 0
    assert teacher[0].chat_calls == teacher_calls and judge[0].calls == 8
    assert [r["judge_correct"] for r in _rows(out)] == [True, True, False, False, True, True, False, False]
    assert _run(tmp_path, teacher[1], retriever[1], judge[1], "--keep", "correct,clean")[0] == 0
    assert judge[0].calls == 8 and teacher[0].chat_calls == teacher_calls  # verdicts journaled with the rollouts


def test_a_failing_judge_is_retried_then_counted_and_the_next_run_asks_again(tmp_path: Path,
                                                                             teacher: tuple[FakeTeacher, Served],
                                                                             retriever: tuple[FakeRetriever, Served],
                                                                             judge: tuple[FakeJudge, Served]) -> None:
    _script(teacher[0])
    judge[0].verdicts = {"Paris": 500}
    rc, out = _run(tmp_path, teacher[1], retriever[1], judge[1], "--keep", "correct")
    assert rc == 3
    rows = _rows(out)
    assert {r["question"] for r in rows} == {BERLIN}  # unjudged is unknown: not kept as correct
    funnel = record_of(out).funnel
    assert funnel is not None and funnel.judge_failed == 2 and funnel.unknown == 2
    assert judge[0].calls == 6 + 2 * 2  # each 500 retried once (--max-retries 1), then given up
    judge[0].verdicts = {}
    assert _run(tmp_path, teacher[1], retriever[1], judge[1], "--keep", "correct")[0] == 0
    assert {r["question"] for r in _rows(out)} == {PARIS, BERLIN}  # judged on the rerun, nothing regenerated


def test_the_judge_prompt_is_a_strict_template_the_user_can_override(tmp_path: Path,
                                                                     teacher: tuple[FakeTeacher, Served],
                                                                     retriever: tuple[FakeRetriever, Served],
                                                                     judge: tuple[FakeJudge, Served]) -> None:
    _script(teacher[0])
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "judge_prompt.j2").write_text("Is {{ predicted }} right?")
    rc, _ = _run(tmp_path, teacher[1], retriever[1], judge[1], "--template-dir", str(templates))
    assert rc == 2 and teacher[0].chat_calls == 0 and judge[0].calls == 0  # refused before any call
    (templates / "judge_prompt.j2").write_text(
        "Question: {{ question }}\nLabeled answer: {{ golden_answers[0] }}\nPredicted answer: {{ prediction }}")
    rc, out = _run(tmp_path, teacher[1], retriever[1], judge[1], "--template-dir", str(templates))
    assert judge[0].prompts[0].startswith("Question: ") and rc == 3  # "Roma" still gets garbage
    judged = record_of(out).judge
    assert judged is not None and (judged.calls, judged.retries) == (10, 2)  # Roma asked twice


def test_downsampling_solved_questions_is_reproducible(tmp_path: Path, teacher: tuple[FakeTeacher, Served],
                                                       retriever: tuple[FakeRetriever, Served]) -> None:
    _script(teacher[0])
    rc, out = _run(tmp_path, teacher[1], retriever[1], None, "--downsample-solved", "0")
    assert rc == 0
    assert {r["question"] for r in _rows(out)} == {EIFFEL, ROME}  # PARIS and BERLIN were solved by every rollout
    assert record_of(out).to_json()["funnel"]["downsampled"] == 4
    rc, out = _run(tmp_path, teacher[1], retriever[1], None, "--downsample-solved", "1")
    assert len(_rows(out)) == 8


def test_the_word_budget_is_an_output_time_option(tmp_path: Path, teacher: tuple[FakeTeacher, Served],
                                                  retriever: tuple[FakeRetriever, Served]) -> None:
    _script(teacher[0])
    rc, out = _run(tmp_path, teacher[1], retriever[1], None)
    assert rc == 0 and not any("long_reasoning" in r["quality_flags"] for r in _rows(out))
    calls = teacher[0].chat_calls
    rc, out = _run(tmp_path, teacher[1], retriever[1], None, "--max-step-words", "3")
    assert rc == 0 and teacher[0].chat_calls == calls
    assert all("long_reasoning" in r["quality_flags"] for r in _rows(out))  # "I know enough now." is 4 words
    assert record_of(out).curation["max_step_words"] == 3


def test_the_report_and_the_card_say_what_the_judge_decided(tmp_path: Path, teacher: tuple[FakeTeacher, Served],
                                                            retriever: tuple[FakeRetriever, Served],
                                                            judge: tuple[FakeJudge, Served]) -> None:
    _script(teacher[0])
    rc, out = _run(tmp_path, teacher[1], retriever[1], judge[1])
    assert rc == 3  # Roma's verdicts are garbage: unjudged, so unknown
    page = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>',
                                build_report(out).html, re.S).group(1))  # type: ignore[union-attr]
    assert page["correct_by"] == f"LLM judge {JUDGE_MODEL}"
    by_q = {s["q"]: s for s in page["samples"]}
    # exact match and the judge disagree on BERLIN and EIFFEL: the page shows the judge's verdict and its reasons
    assert (by_q[BERLIN]["em"], by_q[BERLIN]["c"]) == (True, False)
    assert (by_q[EIFFEL]["em"], by_q[EIFFEL]["c"]) == (False, True) and by_q[EIFFEL]["jr"].startswith("The prediction")
    assert by_q[ROME]["c"] is None and by_q[PARIS]["pr"] == 1.0 and by_q[BERLIN]["pr"] == 0.0
    assert (page["summary"]["correct"], page["summary"]["scored"]) == (4, 6)  # PARIS and EIFFEL, twice each
    assert sorted(page["summary"]["pass_rates"]) == [[0.0, 1], [1.0, 2]]  # ROME's rate is unknown
    record = record_of(out)
    assert record.funnel is not None
    assert page["funnel"] == [[stage_label(s, record.funnel), n] for s, n in record.funnel.stages()][2:]
    assert [f"LLM judge {JUDGE_MODEL}" in label for label, _ in page["funnel"]].count(True) == 1  # correct, by whom
    record_view = dict(page["record"])
    assert record_view["correct by"] == f"LLM judge {JUDGE_MODEL}"
    record, sample = load_card_inputs(out)
    body = card_body(record, sample)
    assert f"**Correct** by LLM judge {JUDGE_MODEL} (the curation's notion of correct, `judge_correct`): 4 / 6" in body
