"""Loading inputs in every supported form and resolving question / golden answers (docs/input.md)."""

from __future__ import annotations

from pathlib import Path

import datasets
import pandas as pd
import pytest

from hfdistill.core.errors import InputError
from hfdistill.run.inputs import input_kind, load_input, plan_fields
from tests.conftest import QUESTIONS, verl_rows, write_jsonl, write_verl_parquet


def _questions(ds: datasets.Dataset, **fields: str) -> list[tuple[str, list[str]]]:
    plan = plan_fields(ds.features, fields.get("question"), fields.get("answer"))
    return [(plan.question_of(r), plan.answers_of(r)) for r in ds]


def test_real_layout_needs_no_options(tmp_path: Path) -> None:
    ds = load_input(str(write_verl_parquet(tmp_path / "train.parquet")))
    assert _questions(ds) == QUESTIONS


def test_pandas_written_parquet_with_numpy_lists(tmp_path: Path) -> None:
    path = tmp_path / "pd.parquet"
    pd.DataFrame(verl_rows()).to_parquet(path)
    ds = load_input(str(path)).with_format("numpy")
    plan = plan_fields(ds.features)
    row = ds[0]
    assert plan.answers_of(row) == ["Paris"]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param([{"question": " Who? ", "golden_answers": ["A", "B"]}], [("Who?", ["A", "B"])], id="search-r1"),
        pytest.param([{"question": "Who?", "answer": "A"}], [("Who?", ["A"])], id="plain-answer-string"),
        pytest.param([{"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "Question: Who?"}],
                       "extra_info": {"answer": "A"}}], [("Who?", ["A"])], id="prompt-fallback"),
        pytest.param([{"question": "Who?"}], [("Who?", [])], id="no-answers"),
        pytest.param([{"extra_info": {"question": ""}, "question": "Fallback?"}], [("Fallback?", [])],
                     id="empty-preferred-field-falls-back"),
    ],
)
def test_layouts(tmp_path: Path, rows: list[dict], expected: list[tuple[str, list[str]]]) -> None:
    ds = load_input(str(write_jsonl(tmp_path / "in.jsonl", rows)))
    assert _questions(ds) == expected


def test_explicit_dotted_fields(tmp_path: Path) -> None:
    rows = [{"meta": {"q": "Who?", "gold": ["A"]}, "question": "ignored"}]
    ds = load_input(str(write_jsonl(tmp_path / "in.jsonl", rows)))
    assert _questions(ds, question="meta.q", answer="meta.gold") == [("Who?", ["A"])]


def test_directory_glob_and_saved_dataset(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"question": "A?"}])
    write_jsonl(tmp_path / "d" / "b.jsonl", [{"question": "B?"}])
    assert load_input(str(tmp_path / "d"))["question"] == ["A?", "B?"]
    assert load_input(str(tmp_path / "d" / "*.jsonl"))["question"] == ["A?", "B?"]
    datasets.Dataset.from_list([{"question": "C?"}]).save_to_disk(str(tmp_path / "saved"))
    assert load_input(str(tmp_path / "saved"))["question"] == ["C?"]
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"question": "D?"}])}).save_to_disk(
        str(tmp_path / "saved_dict"))
    assert load_input(str(tmp_path / "saved_dict"))["question"] == ["D?"]


def test_max_samples(tmp_path: Path) -> None:
    path = str(write_verl_parquet(tmp_path / "t.parquet"))
    assert len(load_input(path, max_samples=2)) == 2
    assert len(load_input(path, max_samples=0)) == len(QUESTIONS)
    assert len(load_input(path, max_samples=-1)) == len(QUESTIONS)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        pytest.param(lambda p: str(p / "missing.parquet"), "input file not found: .*missing.parquet", id="missing"),
        pytest.param(lambda p: str(p / "*.parquet"), "no files match", id="empty-glob"),
        pytest.param(lambda p: (p / "x.txt").write_text("hi") and str(p / "x.txt"), "expected files ending in",
                     id="unknown-extension"),
        pytest.param(lambda p: (p / "bad.parquet").write_text("not parquet") and str(p / "bad.parquet"),
                     "cannot read .*bad.parquet as parquet", id="corrupt-parquet"),
        pytest.param(lambda p: (p / "e.jsonl").write_text("") or str(p / "e.jsonl"), "e.jsonl is an empty file",
                     id="empty-file"),
        pytest.param(lambda p: (p / "w.jsonl").write_text("\n  \n") and str(p / "w.jsonl"), "w.jsonl is an empty file",
                     id="blank-lines-only"),
        pytest.param(lambda p: "questions.jsnol", "input file not found: questions.jsnol", id="typo-not-a-hub-id"),
        pytest.param(lambda p: (p / "q.jsonl").write_text("{}") and str(p / "q.jsnol"),
                     r"input file not found: .*q.jsnol \(did you mean .*q.jsonl\?\)", id="typo-suggests"),
    ],
)
def test_bad_inputs(tmp_path: Path, make, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_input(make(tmp_path))


def test_hub_id_that_cannot_be_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError, match="cannot load 'nobody/no-such-dataset:test' from the Hugging Face Hub"):
        load_input("nobody/no-such-dataset:test")


def test_missing_question_field_names_what_exists() -> None:
    features = datasets.Features({"query": datasets.Value("string"),
                                  "meta": {"q": datasets.Value("string")}})
    with pytest.raises(InputError, match=r"cannot find the question: .* fields: query, meta, meta\.q; pass "
                                         r"--question-field"):
        plan_fields(features)
    with pytest.raises(InputError, match=r"--question-field 'meta.x' is not in the input; fields: query, meta"):
        plan_fields(features, "meta.x")
    with pytest.raises(InputError, match=r"--answer-field 'gold' is not in the input"):
        plan_fields(features, "query", "gold")


def test_input_kind(tmp_path: Path) -> None:
    assert input_kind("PeterJinGo/nq_hotpotqa_train:train") == "hub"
    assert input_kind("squad") == "hub"
    assert input_kind("data/hotpotqa_hard_train/train.parquet") == "local"
    assert input_kind(str(tmp_path)) == "local"
    assert input_kind("data/*.jsonl") == "local"
    assert input_kind("questions.jsnol") == "local"  # a mistyped suffix is a file, never a Hub id
    assert input_kind("train.parqeut") == "local"
    assert input_kind("data.cvs") == "local"
    assert input_kind("org/name.v2") == "hub"  # digits: a version, not a suffix
    assert input_kind("org/dataset.names") == "hub"  # far from every data suffix
