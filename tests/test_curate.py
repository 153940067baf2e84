"""`hfdistill curate` (judge and re-curate a file with no teacher) and the funnel the card shows."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from hfdistill.cli.main import main
from hfdistill.run.output import METADATA_KEY, read_record
from tests.fake_judge import FakeJudge
from tests.fakes import Answer, FakeRetriever, FakeTeacher, Raw, Search, Served
from tests.test_judged_runs import BERLIN, EIFFEL, GOLDEN, PARIS, ROME, _script


def _generate(tmp_path: Path, *extra: str, judge: Served | None = None) -> Path:
    teacher, retriever = FakeTeacher(), FakeRetriever()
    _script(teacher)
    teacher.script(ROME, Search(["capital of Italy"]), Search(["capital of Italy"]), Answer("Rome"))  # repetition
    teacher.script(BERLIN, Raw("<tool_call>{not json"), Answer("Berlin"))  # malformed_call
    servers = [Served(teacher.app()), Served(retriever.app())]
    inp = tmp_path / "questions.jsonl"
    inp.write_text("".join(json.dumps({"question": q, "golden_answers": a}) + "\n" for q, a in GOLDEN.items()))
    out = tmp_path / "out.parquet"
    args = ["generate", "--vllm_url", f"{servers[0].url}/v1", "--retrieval_url", f"{servers[1].url}/retrieve",
            "--input_file", str(inp), "--output_file", str(out), "--num-rollouts", "2", "--max_assistant_turns", "4",
            "-q", "--keep-malformed", *extra]
    if judge is not None:
        args += ["--judge-url", f"{judge.url}/v1"]
    try:
        assert main(args) == 0
    finally:
        for served in servers:  # curate must not need them
            served.close()
    return out


@pytest.fixture
def judge() -> Any:
    fake = FakeJudge()
    fake.verdicts = {"Berlin": "incorrect", "Gustave Eiffel": "correct"}
    served = Served(fake.app())
    yield fake, served
    served.close()


def _rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def test_curate_judges_and_selects_without_the_teacher(tmp_path: Path, judge: tuple[FakeJudge, Served]) -> None:
    out = _generate(tmp_path)
    cur = tmp_path / "best.parquet"
    rc = main(["curate", str(out), "-o", str(cur), "--judge-url", f"{judge[1].url}/v1", "--select", "best", "-q"])
    assert rc == 0
    assert judge[0].calls == 8  # every rollout has a prediction and golden answers
    best = _rows(cur)
    assert [(r["question"], r["rollout_index"]) for r in best] == [(PARIS, 0), (EIFFEL, 0), (ROME, 0)]
    assert all(r["judge_correct"] and r["pass_rate"] == 1.0 for r in best)
    record, source = read_record(cur), read_record(out)
    assert record is not None and source is not None
    assert record.curation["select"] == "best" and record.funnel is not None and record.funnel.selected == 3
    assert record.curated is not None and record.curated.source == str(out)
    assert record.fingerprint == source.fingerprint
    # the same judge again: every verdict is in the file, nothing is asked
    again = tmp_path / "clean.parquet"
    assert main(["curate", str(cur), "-o", str(again), "--judge-url", f"{judge[1].url}/v1", "--keep", "clean",
                 "-q"]) == 0
    assert judge[0].calls == 8
    # flags on a real generated file: the corpus knows nothing of Eiffel, and ROME searched the same query twice
    assert [r["quality_flags"] for r in best] == [[], ["empty_observation"], ["repetition"]]
    assert [r["question"] for r in _rows(again)] == [PARIS]
    assert [r["pass_rate"] for r in _rows(again)] == [1.0]  # kept from a file that holds part of the rollouts


def test_curate_reads_a_file_written_before_curation_existed(tmp_path: Path) -> None:
    out = _generate(tmp_path)
    table = pq.read_table(out)
    old = tmp_path / "old.parquet"
    legacy = table.drop_columns(["judge_correct", "judge_rationale", "pass_rate", "num_tokens", "tool_calls_by_name"])
    record = pq.read_metadata(out).metadata[METADATA_KEY]
    pq.write_table(legacy.replace_schema_metadata({METADATA_KEY: record}), old)
    cur = tmp_path / "cur.parquet"
    assert main(["curate", str(old), "-o", str(cur), "--keep", "correct", "-q"]) == 0
    rows = _rows(cur)
    assert {r["question"] for r in rows} == {PARIS, ROME}  # exact match, and the malformed row held back
    assert all(r["judge_correct"] is None and r["pass_rate"] == 1.0 for r in rows)
    assert [r["tool_calls_by_name"] for r in rows] == [
        [{"name": "search", "calls": r["num_tool_calls"]}] if r["num_tool_calls"] else [] for r in rows]


def _card_table(card: str, header: str) -> list[list[str]]:
    section = card.split(header, 1)[1].split("\n\n", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()[2:]
            if line.startswith("|")]


def test_the_cards_funnel_equals_counts_from_the_file(tmp_path: Path, judge: tuple[FakeJudge, Served]) -> None:
    out = _generate(tmp_path, judge=judge[1])
    readme = tmp_path / "README.md"
    assert main(["card", str(out), "-o", str(readme), "-q"]) == 0
    card = readme.read_text()
    assert "Correct** is decided by\nLLM judge judge/Qwen2.5-72B-Instruct" in card
    stages = {label.split(" (")[0]: int(count.replace(",", ""))
              for label, count, _ in _card_table(card, "| stage | rollouts | share of rollouts |")}
    rows = _rows(out)  # --keep all --keep-malformed: every finished rollout is in the file
    answered = [r for r in rows if r["stop_reason"] == "answer"]
    correct = [r for r in answered if r["judge_correct"]]
    clean = [r for r in correct if not r["quality_flags"]]
    assert stages == {"questions in the input": 4, "skipped": 0, "rollouts": len(rows), "failed": 0,
                      "answered": len(answered), "correct": len(correct), "clean": len(clean),
                      "within the token budget": len(clean), "selected": len(rows)}
    assert (len(answered), len(correct), len(clean)) == (8, 6, 2)
    by_searches = _card_table(card, "| searches | rollouts scored | correct | accuracy |")
    judged = Counter(r["num_tool_calls"] for r in rows)
    right = Counter(r["num_tool_calls"] for r in rows if r["judge_correct"])
    assert [(int(s), int(n), int(c)) for s, n, c, _ in by_searches] == [
        (k, judged[k], right[k]) for k in sorted(judged)]
    assert re.search(r"Curation options: .*`keep=all`", card)
