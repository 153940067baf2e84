"""The dataset card: metadata the Hub accepts, a body with the run's facts, merging into existing cards."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard, DatasetCardData

from hfdistill.cli.main import main
from hfdistill.publish.card import (
    BEGIN_MARKER,
    END_MARKER,
    LICENSE_PLACEHOLDER,
    build_card,
    card_body,
    hub_dataset_id,
    load_card_inputs,
    redact_command,
    size_category,
)
from hfdistill.publish.render import render_conversation
from hfdistill.run.record import GenerationRecord, InputInfo, TeacherInfo
from tests.conftest import QUESTIONS
from tests.fake_hub import metadata_errors
from tests.fakes import Answer, FakeRetriever, FakeTeacher, Say, Search, Served

VERL_KEYS = ("python -m verl.trainer.sft_trainer", "data.train_files=", "data.messages_key=messages",
             "data.tools_key=tools", "data.ignore_input_ids_mismatch=true", "data.max_length=", "data.truncation=",
             "model.path=")
CONFIGS = [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]


def distill(tmp_path: Path, teacher: tuple[FakeTeacher, Served], retriever: tuple[FakeRetriever, Served],
            real_layout: Path, *extra: str) -> Path:
    """A real output file: `hfdistill generate` against the fakes, with varied stop reasons and turns."""
    fake, _ = teacher
    fake.script(QUESTIONS[1][0], Search(["Dubai English Speaking College founder"]), Search(["Haya bint Hussein"]),
                Answer("Haya bint Hussein"))
    fake.script(QUESTIONS[2][0], Say("I cannot tell."))
    out = tmp_path / "train_distilled.parquet"
    rc = main(["generate", "--vllm_url", f"{teacher[1].url}/v1", "--retrieval_url", f"{retriever[1].url}/retrieve",
               "--input_file", str(real_layout), "--output_file", str(out), *extra])
    assert rc == 0
    return out


@pytest.fixture
def distilled(tmp_path: Path, teacher: tuple[FakeTeacher, Served], retriever: tuple[FakeRetriever, Served],
              real_layout: Path) -> Path:
    return distill(tmp_path, teacher, retriever, real_layout)


def _metadata(text: str) -> dict[str, Any]:
    return DatasetCard(text).data.to_dict()


# ---------------------------------------------------------------- metadata


def test_metadata_is_what_the_hub_accepts(distilled: Path) -> None:
    record, sample = load_card_inputs(distilled)
    text = build_card(record, sample, repo_id="me/search-sft")

    card = DatasetCard(text)
    assert isinstance(card.data, DatasetCardData)
    meta = card.data.to_dict()
    assert meta["license"] == LICENSE_PLACEHOLDER == "other"
    assert meta["task_categories"] == ["text-generation"]
    assert meta["tags"] == ["synthetic", "distillation", "tool-calling", "search", "hfdistill",
                            "tongyi-deepresearch-30b-a3b"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == CONFIGS
    assert "source_datasets" not in meta  # the input was a local file
    assert all(isinstance(v, list) and all(isinstance(x, str) for x in v)
               for k, v in meta.items() if k in ("tags", "task_categories", "size_categories"))
    assert metadata_errors(text) == []
    # what huggingface_hub renders back is the same metadata
    assert _metadata(str(card)) == meta


def test_license_option_and_a_hub_input_become_metadata(distilled: Path) -> None:
    record, sample = load_card_inputs(distilled)
    assert record.input.kind == "local"
    record = record.replace(input=dataclasses.replace(record.input, source="PeterJinGo/nq_hotpotqa_train:train",
                                                      kind="hub"), rows=25_000)
    meta = _metadata(build_card(record, sample, license="cc-by-4.0"))
    assert meta["license"] == "cc-by-4.0"
    assert meta["source_datasets"] == ["PeterJinGo/nq_hotpotqa_train"]
    assert meta["size_categories"] == ["10K<n<100K"]


@pytest.mark.parametrize(("rows", "bucket"), [
    pytest.param(0, "n<1K", id="empty"),
    pytest.param(999, "n<1K", id="999"),
    pytest.param(1_000, "1K<n<10K", id="1K"),
    pytest.param(99_999, "10K<n<100K", id="99999"),
    pytest.param(100_000, "100K<n<1M", id="100K"),
    pytest.param(5_000_000, "1M<n<10M", id="5M"),
    pytest.param(10**13, "n>1T", id="huge"),
])
def test_size_category_follows_the_hub_buckets(rows: int, bucket: str) -> None:
    assert size_category(rows) == bucket


@pytest.mark.parametrize(("source", "kind", "expected"), [
    pytest.param("data/hotpotqa_hard_train/train.parquet", "local", None, id="file"),
    pytest.param("org/name", "local", None, id="a-local-folder-named-like-a-hub-id"),
    pytest.param("org/name:validation", "hub", "org/name", id="hub-id-split"),
    pytest.param("squad", "hub", "squad", id="canonical-hub-id"),
])
def test_hub_dataset_id_is_what_generate_recorded(source: str, kind: str, expected: str | None) -> None:
    record = GenerationRecord(fingerprint="f", complete=True, rows=0, rollouts=0, input=InputInfo(source, kind))
    assert hub_dataset_id(record) == expected


# ---------------------------------------------------------------- body


def test_body_has_the_facts_the_sample_and_the_recipes(distilled: Path) -> None:
    record, sample = load_card_inputs(distilled)
    assert sample is not None
    body = DatasetCard(build_card(record, sample, repo_id="me/search-sft")).text
    counts = record.counts

    assert "Alibaba-NLP/Tongyi-DeepResearch-30B-A3B" in body
    assert "**Rows:** 3 (from 3 questions; 3 rollouts generated)" in body
    # statistics: stop reasons, turns and searches distributions, accuracy, tokens
    assert counts.stop_reasons == {"answer": 2, "no_tool_call": 1}
    assert "| `answer` | 2 | 66.7% |" in body and "| `no_tool_call` | 1 | 33.3% |" in body
    assert counts.turns == {1: 1, 2: 1, 3: 1}
    assert "| 3 | 1 | 33.3% |" in body  # three assistant turns: one rollout
    assert counts.searches == {0: 1, 1: 1, 2: 1}
    assert "Exact match** with a golden answer: 2 / 3 = **0.667**" in body
    assert f"prompt {counts.prompt_tokens:,}" in body and f"completion {counts.completion_tokens:,}" in body
    # generation options
    assert "| temperature | 0.7 |" in body and "| max_assistant_turns | 3 |" in body
    # the sample: the most telling row (a correct answer after searching), rendered as `inspect` does
    assert sample["exact_match"] and sample["num_tool_calls"] >= 1
    assert render_conversation(sample).strip() in body
    # schema, loading, training, reproducing
    assert "| `messages` |" in body and "| `tools` |" in body
    assert 'load_dataset("me/search-sft", split="train")' in body
    for key in VERL_KEYS:
        assert key in body, key
    assert "data.multiturn" not in body
    assert record.command and record.command in body
    assert f"pip install hfdistill=={record.hfdistill_version}" in body
    assert body.strip().startswith(BEGIN_MARKER) and body.strip().endswith(END_MARKER)


def test_kept_rows_and_a_chosen_license_are_stated(tmp_path: Path, teacher: tuple[FakeTeacher, Served],
                                                   retriever: tuple[FakeRetriever, Served], real_layout: Path) -> None:
    out = distill(tmp_path, teacher, retriever, real_layout, "--keep", "correct")
    record, sample = load_card_inputs(out)
    body = card_body(record, sample, license="mit")
    assert record.rows == 2
    assert "Over the 3 rollouts generated" in body and "this dataset keeps 2 of them" in body
    assert "| rows kept (--keep) | correct |" in body
    assert "**License:** `mit`" in body and "placeholder" not in body


def test_secrets_in_the_recorded_command_are_masked() -> None:
    command = ("VLLM_URL=http://user:pw@gpu:8000/v1 OPENAI_API_KEY=sk-live hfdistill generate --api-key sk-secret "
               "--api_key=sk-other --input_file 'my data.parquet'")
    masked = redact_command(command)
    assert "sk-" not in masked and "pw@" not in masked
    assert masked == ("VLLM_URL=http://gpu:8000/v1 OPENAI_API_KEY=REDACTED hfdistill generate --api-key REDACTED "
                      "--api_key=REDACTED --input_file 'my data.parquet'")


def test_a_sample_with_backticks_gets_a_longer_fence(distilled: Path) -> None:
    record, sample = load_card_inputs(distilled)
    assert sample is not None
    sample["messages"][-1]["content"] = "```python\nprint(1)\n```\n<answer>Paris</answer>"
    body = card_body(record, sample)
    assert "````text\n" in body and "\n````\n" in body


def test_an_empty_output_still_has_a_card() -> None:
    record = GenerationRecord(fingerprint="f", complete=True, rows=0, rollouts=0, teacher=TeacherInfo("org/teacher"),
                              input=InputInfo("q.jsonl", "file"))
    text = build_card(record, None)
    assert _metadata(text)["size_categories"] == ["n<1K"]
    assert "This dataset has no rows." in text
    assert "was not recorded" in text
    assert metadata_errors(text) == []


# ---------------------------------------------------------------- the `card` command


def test_card_command_writes_and_then_merges(distilled: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    assert main(["card", str(distilled), "-o", str(readme), "--repo-id", "me/x", "--license", "mit"]) == 0
    text = readme.read_text()
    assert _metadata(text)["license"] == "mit" and 'load_dataset("me/x"' in text

    readme.write_text(text.replace(END_MARKER, END_MARKER + "\n\nMy own notes.\n"))
    assert main(["card", str(distilled), "-o", str(readme)]) == 0
    again = readme.read_text()
    assert "My own notes." in again and _metadata(again)["license"] == "mit"

    assert main(["card", str(distilled)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("---\n") and "## Train on it with verl" in printed


def test_card_of_a_file_hfdistill_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"messages": [json.dumps([])]}), plain)
    assert main(["card", str(plain)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no hfdistill generation record" in err and err.count("\n") == 1
