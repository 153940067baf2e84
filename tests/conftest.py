"""Shared fixtures: scripted servers on loopback and small inputs in the layouts users have."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hfdistill.run.output import read_record
from hfdistill.run.record import GenerationRecord
from tests.fakes import FakeRetriever, FakeTeacher, Served, TeacherBehaviour

QUESTIONS = [
    ("What is the capital of France?", ["Paris"]),
    ("Who founded the Dubai English Speaking College?", ["Haya bint Hussein", "Princess Haya"]),
    ("What is the capital of Germany?", ["Berlin"]),
]


@pytest.fixture
def teacher() -> Iterator[tuple[FakeTeacher, Served]]:
    fake = FakeTeacher()
    served = Served(fake.app())
    yield fake, served
    served.close()


@pytest.fixture
def text_teacher() -> Iterator[tuple[FakeTeacher, Served]]:
    """A plain `vllm serve`: refuses tools=, thinking inline in content."""
    fake = FakeTeacher(TeacherBehaviour(native=False, reasoning=None))
    served = Served(fake.app())
    yield fake, served
    served.close()


@pytest.fixture
def retriever() -> Iterator[tuple[FakeRetriever, Served]]:
    fake = FakeRetriever()
    served = Served(fake.app())
    yield fake, served
    served.close()


@pytest.fixture
def env(teacher: tuple[FakeTeacher, Served], retriever: tuple[FakeRetriever, Served],
        monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The original tool's environment variables pointed at the fake servers."""
    values = {"VLLM_URL": f"{teacher[1].url}/v1", "RETRIEVAL_URL": f"{retriever[1].url}/retrieve"}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    for key in ("MAX_ASSISTANT_TURNS", "MAX_SAMPLES", "INPUT_FILE", "OUTPUT_FILE", "BATCH_SIZE", "TEMPERATURE",
                "MAX_TOKENS"):
        monkeypatch.delenv(key, raising=False)
    return values


def verl_rows(questions: list[tuple[str, list[str]]] = QUESTIONS) -> list[dict[str, Any]]:
    """Rows in the real HotpotQA-hard layout of docs/input.md (no top-level question column)."""
    rows = []
    for i, (q, answers) in enumerate(questions):
        rows.append({
            "data_source": "searchR1_hotpotqa_hard",
            "agent_name": "tool_agent",
            "prompt": [{"content": "Role: information-seeking assistant.", "role": "system"},
                       {"content": f"Question:{q}", "role": "user"}],
            "ability": "search",
            "reward_model": {"ground_truth": {"target": answers}, "style": "rule"},
            "extra_info": {"answer": answers[0], "index": 1000 + i, "need_tools_kwargs": True, "question": q,
                           "split": "train",
                           "tools_kwargs": {"search": {"create_kwargs": {"ground_truth": {"target": answers},
                                                                         "question": q}}}},
        })
    return rows


def write_verl_parquet(path: Path, questions: list[tuple[str, list[str]]] = QUESTIONS) -> Path:
    pq.write_table(pa.Table.from_pylist(verl_rows(questions)), path)
    return path


@pytest.fixture
def real_layout(tmp_path: Path) -> Path:
    return write_verl_parquet(tmp_path / "train.parquet")


def record_of(path: Path) -> GenerationRecord:
    """The generation record an output file holds (it must hold one)."""
    record = read_record(path)
    assert record is not None, f"{path} holds no generation record"
    return record


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
