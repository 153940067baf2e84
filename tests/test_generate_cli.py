"""End to end through `hfdistill generate` with the original tool's variables, against loopback servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

import hfdistill
from hfdistill.cli.main import default_output, main
from hfdistill.run.output import read_record
from hfdistill.run.record import GenerationRecord, RetrievalInfo, TeacherInfo
from tests.conftest import QUESTIONS, write_jsonl
from tests.fakes import Answer, FakeRetriever, FakeTeacher, Search, Served
from tests.verl_rules import check_output

REPO = Path(__file__).resolve().parent.parent


def _read(path: Path) -> datasets.Dataset:
    return datasets.load_dataset("parquet", data_files=str(path), split="train")


def test_seed_environment_variables_on_the_real_layout(env: dict[str, str], real_layout: Path, tmp_path: Path,
                                                       teacher: tuple[FakeTeacher, Served],
                                                       retriever: tuple[FakeRetriever, Served],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "train_distilled.parquet"
    monkeypatch.setenv("INPUT_FILE", str(real_layout))
    monkeypatch.setenv("OUTPUT_FILE", str(out))
    monkeypatch.setenv("MAX_ASSISTANT_TURNS", "4")
    monkeypatch.setenv("TEMPERATURE", "0.3")
    monkeypatch.setenv("MAX_TOKENS", "512")
    monkeypatch.setenv("BATCH_SIZE", "2")
    monkeypatch.setenv("MAX_SAMPLES", "2")
    fake, _ = teacher
    fake.script(QUESTIONS[1][0], Search(["Dubai English Speaking College founder"]),
                Search(["Haya bint Hussein"], key="query"), Answer("Haya bint Hussein"))

    assert main(["generate"]) == 0

    ds = _read(out)
    assert ds.num_rows == 2  # MAX_SAMPLES
    rows = check_output(out)
    # the question came from extra_info.question: never an empty "Question: "
    assert [r["messages"][1]["content"] for r in rows] == [f"Question: {q}" for q, _ in QUESTIONS[:2]]
    assert [r["golden_answers"] for r in rows] == [a for _, a in QUESTIONS[:2]]
    assert rows[1]["num_tool_calls"] == 2 and rows[1]["assistant_turns"] == 3
    assert rows[1]["stop_reason"] == "answer" and rows[1]["prediction"] == "Haya bint Hussein"
    assert rows[1]["exact_match"] is True
    assert rows[0]["extra_info"]["index"] == 1000  # the input's extra_info kept
    # Tongyi's `query` argument is stored as the schema's query_list
    assert json.loads(rows[1]["messages"][4]["tool_calls"][0]["function"]["arguments"]) == {
        "query_list": ["Haya bint Hussein"]}
    assert "Query: Haya bint Hussein\n[1] Haya bint Hussein: Princess Haya" in rows[1]["messages"][5]["content"]
    sent = fake.requests[-1]
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 512 and "tools" in sent
    # one Search-R1 request per tool call, with all its queries
    # (request 0 is the start-up probe that checks the server speaks Search-R1)
    assert retriever[0].requests[1] == {"queries": ["capital of France"], "topk": 3, "return_scores": True}


def test_flags_win_over_environment_and_dash_spellings_work(env: dict[str, str], real_layout: Path,
                                                            tmp_path: Path, teacher: tuple[FakeTeacher, Served],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPERATURE", "0.3")
    monkeypatch.setenv("OUTPUT_FILE", str(tmp_path / "from_env.parquet"))
    out = tmp_path / "from_flag.parquet"
    rc = main(["generate", "--input_file", str(real_layout), "--output-file", str(out), "--temperature", "0.9",
               "--max-assistant-turns", "1", "--top-p", "0.95", "--presence_penalty", "1.1", "--topk", "2"])
    assert rc == 0
    assert out.exists() and not (tmp_path / "from_env.parquet").exists()
    sent = teacher[0].requests[-1]
    assert (sent["temperature"], sent["top_p"], sent["presence_penalty"]) == (0.9, 0.95, 1.1)
    rows = check_output(out)
    # one turn allowed: the search runs, then the loop stops
    assert {r["stop_reason"] for r in rows} == {"max_turns"}
    assert all(r["messages"][-1]["role"] == "tool" for r in rows)
    assert rows[0]["messages"][3]["content"].count("\n[") == 2  # --topk 2


def test_text_protocol_against_a_plain_vllm_serve(text_teacher: tuple[FakeTeacher, Served],
                                                 retriever: tuple[FakeRetriever, Served], real_layout: Path,
                                                 tmp_path: Path) -> None:
    fake, served = text_teacher
    out = tmp_path / "out.parquet"
    rc = main(["generate", "--vllm_url", f"{served.url}/v1", "--retrieval_url", f"{retriever[1].url}/retrieve",
               "--input_file", str(real_layout), "--output_file", str(out)])
    assert rc == 0
    # auto tried tools= once, was refused (the same request without it was answered), and every later request
    # used the text protocol (the last probe asks whether the server takes request priorities)
    assert [("tools" in r, "priority" in r) for r in fake.probes] == [(True, False), (False, False), (False, True)]
    chat = fake.requests
    assert all("tools" not in r for r in chat)
    # the longer stop string first: vLLM tries them in order, and "<tool_response>" would leave the newline
    assert chat and all(r["stop"] == ["\n<tool_response>", "<tool_response>"] for r in chat)
    system = chat[0]["messages"][0]["content"]
    assert "<tools>\n" in system and '"query_list"' in system and "<tool_call>" in system
    rows = check_output(out)
    row = rows[0]
    assert row["stop_reason"] == "answer"
    # inline <think> became reasoning_content; the stored call is a real tool call, not text
    assistant = row["messages"][2]
    assert assistant["reasoning_content"] == "I should look this up."
    assert assistant["content"] == "" and "<tool_call>" not in assistant["content"]
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"query_list": ["capital of France"]}
    # the stored system prompt has no tools section (verl renders tools from the tools column)
    assert "<tools>" not in row["messages"][0]["content"]
    # what went back to the server: the model's own text, then the result as a <tool_response>
    second = next(r for r in chat if len(r["messages"]) == 4)["messages"]
    assert second[2]["content"].startswith("<think>") and "<tool_call>" in second[2]["content"]
    assert second[3]["role"] == "user" and second[3]["content"].startswith("<tool_response>\nQuery: capital")


def test_native_and_text_protocols_store_the_same_conversation(teacher: tuple[FakeTeacher, Served],
                                                               text_teacher: tuple[FakeTeacher, Served],
                                                               retriever: tuple[FakeRetriever, Served],
                                                               real_layout: Path, tmp_path: Path) -> None:
    outs = []
    for name, (_, served) in (("native", teacher), ("text", text_teacher)):
        out = tmp_path / f"{name}.parquet"
        assert main(["generate", "--vllm_url", f"{served.url}/v1", "--retrieval_url",
                     f"{retriever[1].url}/retrieve", "--input_file", str(real_layout), "--output_file",
                     str(out)]) == 0
        outs.append(check_output(out))
    for native_row, text_row in zip(*outs, strict=True):
        strip = [{k: v for k, v in m.items() if k not in ("tool_call_id", "tool_calls")} for m in
                 native_row["messages"]]
        assert strip == [{k: v for k, v in m.items() if k not in ("tool_call_id", "tool_calls")} for m in
                         text_row["messages"]]


def test_python_dash_m_runs_the_cli(env: dict[str, str], real_layout: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    proc = subprocess.run([sys.executable, "-m", "hfdistill", "generate", "--input_file", str(real_layout),
                           "--output_file", str(out), "-q"], capture_output=True, text=True, timeout=120,
                          env={**os.environ}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # data goes to files, logs to stderr
    assert "rollouts (" not in proc.stderr and "stop reasons: answer 3" in proc.stderr  # -q: summary only
    assert pq.read_table(out).num_rows == len(QUESTIONS)


def test_progress_and_summary_go_to_stderr(env: dict[str, str], real_layout: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--input_file", str(real_layout), "--output_file", str(tmp_path / "o.parquet")]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "3/3 rollouts (100.0%) | elapsed" in captured.err and "failed 0" in captured.err
    assert "stop reasons: answer 3" in captured.err
    assert "mean assistant turns 2.00, mean searches 1.00" in captured.err
    assert "tokens: prompt" in captured.err and "done in" in captured.err
    assert "teacher calls 6, retried 0" in captured.err  # 3 rollouts x 2 turns (the protocol probe is not one)


@pytest.mark.parametrize(
    ("layout", "rows"),
    [
        pytest.param("search-r1.jsonl", [{"id": "1", "question": "What is the capital of France?",
                                          "golden_answers": ["Paris"]}], id="search-r1-jsonl"),
        pytest.param("plain.csv", "question,answer\nWhat is the capital of France?,Paris\n", id="plain-csv"),
        pytest.param("plain.json", [{"question": "What is the capital of France?", "answer": "Paris"}],
                     id="plain-json-lines"),
    ],
)
def test_other_input_layouts(env: dict[str, str], tmp_path: Path, layout: str, rows: object) -> None:
    path = tmp_path / layout
    if isinstance(rows, str):
        path.write_text(rows)
    else:
        write_jsonl(path, rows)  # type: ignore[arg-type]
    out = tmp_path / "o.parquet"
    assert main(["generate", "--input_file", str(path), "--output_file", str(out)]) == 0
    row = check_output(out)[0]
    assert row["question"] == "What is the capital of France?"
    assert row["golden_answers"] == ["Paris"] and row["exact_match"] is True
    assert row["extra_info"] == {"index": 0}


def test_default_output_name() -> None:
    assert default_output("data/hotpotqa_hard_train/train.parquet") == "train_distilled.parquet"
    assert default_output("org/questions:validation") == "questions_validation_distilled.parquet"
    assert default_output("data/*.jsonl") == "output_distilled.parquet"


def test_the_file_carries_its_generation_record(env: dict[str, str], real_layout: Path, tmp_path: Path,
                                               teacher: tuple[FakeTeacher, Served],
                                               retriever: tuple[FakeRetriever, Served]) -> None:
    out = tmp_path / "o.parquet"
    assert main(["generate", "--input_file", str(real_layout), "--output_file", str(out), "--temperature", "0.6",
                 "--top-p", "0.95", "--api-key", "sk-secret", "--observation-format", "verl"]) == 0
    record = read_record(out)
    assert record is not None and record.hfdistill_version == hfdistill.__version__
    assert record.teacher == TeacherInfo(teacher[0].model, ("127.0.0.1",), "native")
    assert record.retrieval == RetrievalInfo(host="127.0.0.1")
    options = record.generation_options
    assert (options.temperature, options.top_p, options.max_tokens, options.topk) == (0.6, 0.95, 2048, 3)
    assert options.observation_format == "verl" and options.max_assistant_turns == 3
    assert set(record.templates.sha256) == set(record.templates.names) >= {"system_prompt.j2",
                                                                          "tool_observation_verl.j2"}
    assert record.input.source == str(real_layout) and record.input.questions == len(QUESTIONS)
    assert record.input.question_fields[0] == "extra_info.question"
    assert record.rows == len(QUESTIONS) and record.complete is True
    counts = record.counts
    assert counts.stop_reasons == {"answer": 3} and counts.mean(counts.searches) == 1.0
    assert counts.prompt_tokens > 0 and counts.accuracy is not None
    stored = json.loads(pq.read_metadata(out).metadata[b"hfdistill"])  # as JSON, in the file
    assert stored["teacher"] == {"model": teacher[0].model, "hosts": ["127.0.0.1"], "protocol": "native"}
    assert stored["counts"]["mean_searches"] == 1.0 and GenerationRecord.from_json(stored) == record
    assert "sk-secret" not in json.dumps(stored) and "--api-key REDACTED" in record.command
    assert "VLLM_URL=http://127.0.0.1" in record.command  # the seed's variables are part of the command
    assert b"sk-secret" not in out.read_bytes()
    # one client per run: the served models were listed once, by the run's own teacher client
    assert teacher[0].models_calls == 1
