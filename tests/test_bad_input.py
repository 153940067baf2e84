"""Every expected problem: one line `error: ...` naming the fix, the right exit code, no teacher call."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hfdistill.cli.main import main
from tests.conftest import write_jsonl
from tests.fakes import FakeRetriever, FakeTeacher, Fault, Served


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _empty_parquet(tmp_path: Path) -> Path:
    pq.write_table(pa.table({"question": pa.array([], pa.string())}), tmp_path / "none.parquet")
    return tmp_path / "none.parquet"


def _truncated(real: Path, tmp_path: Path) -> Path:
    data = real.read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])  # an interrupted copy
    return tmp_path / "cut.parquet"


def _template_dir(tmp_path: Path, name: str, content: bytes) -> str:
    d = tmp_path / "tpl"
    d.mkdir(exist_ok=True)
    (d / name).write_bytes(content)
    return str(d)


# (id, extra argv built from tmp_path and the input path, env overrides, expected message regex)
CASES: list[tuple[str, Callable[[Path, Path], list[str]], dict[str, str], str]] = [
    ("missing-input", lambda t, i: ["--input_file", str(t / "nope.parquet")], {},
     r"input file not found: .*nope\.parquet; set INPUT_FILE or --input_file"),
    ("unreadable-input", lambda t, i: ["--input_file", str((t / "bad.parquet").write_text("garbage") and
                                                          t / "bad.parquet")], {},
     r"cannot read .*bad\.parquet as parquet"),
    ("empty-file", lambda t, i: ["--input_file", str(write_jsonl(t / "empty.jsonl", []))], {},
     r"input .*empty\.jsonl is an empty file; point INPUT_FILE / --input_file at a dataset"),
    ("empty-dataset", lambda t, i: ["--input_file", str(_empty_parquet(t))], {}, r"has no rows"),
    ("truncated-parquet", lambda t, i: ["--input_file", str(_truncated(i, t))], {},
     r"cannot read .*cut\.parquet as parquet: .*; check it is a complete parquet file"),
    ("broken-jsonl", lambda t, i: ["--input_file", str(_text(t / "b.jsonl", '{"question": "x"}\n{broken\n'))], {},
     r"cannot read .*b\.jsonl as json: JSON parse error"),
    ("typo-suffix-not-sent-to-the-hub", lambda t, i: ["--input_file", "questions.jsnol"], {},
     r"input file not found: questions\.jsnol; set INPUT_FILE"),
    ("typo-suggests-the-file", lambda t, i: ["--input_file", str(t / "train.parqeut")], {},
     r"input file not found: .*train\.parqeut \(did you mean .*train\.parquet\?\)"),
    ("missing-field", lambda t, i: ["--question-field", "extra_info.query"], {},
     r"--question-field 'extra_info\.query' is not in the input; fields: .*extra_info\.question"),
    ("no-question-anywhere", lambda t, i: ["--input_file", str(write_jsonl(t / "q.jsonl", [{"query": "x"}]))], {},
     r"cannot find the question: .*fields: query; pass --question-field"),
    ("zero-turns-from-env", lambda t, i: [], {"MAX_ASSISTANT_TURNS": "0"}, r"^error: MAX_ASSISTANT_TURNS must be >= 1, "
     r"got 0"),
    ("zero-turns-from-flag", lambda t, i: ["--max-assistant-turns", "0"], {}, r"--max_assistant_turns must be >= 1"),
    ("tokens-from-env", lambda t, i: [], {"MAX_TOKENS": "-1"}, r"^error: MAX_TOKENS must be >= 1, got -1"),
    ("batch-size-from-env", lambda t, i: [], {"BATCH_SIZE": "0"}, r"^error: BATCH_SIZE must be >= 1, got 0"),
    ("negative-turns", lambda t, i: ["--max_assistant_turns", "-2"], {}, r"must be >= 1, got -2"),
    ("turns-not-a-number", lambda t, i: [], {"MAX_ASSISTANT_TURNS": "three"},
     r"MAX_ASSISTANT_TURNS must be an integer, got 'three'"),
    ("bad-vllm-url", lambda t, i: ["--vllm_url", "localhost:8000"], {}, r"VLLM_URL / --vllm_url 'localhost:8000' "
     r"is not an http\(s\) URL"),
    ("bad-retrieval-url", lambda t, i: [], {"RETRIEVAL_URL": "ftp://x/retrieve"}, r"RETRIEVAL_URL .* is not an"),
    ("bad-port", lambda t, i: ["--vllm_url", "http://localhost:99999/v1"], {}, r"invalid port"),
    ("missing-template-dir", lambda t, i: ["--template-dir", str(t / "nowhere")], {},
     r"--template-dir .*nowhere is not a directory"),
    ("unreadable-template", lambda t, i: ["--template-dir", _template_dir(t, "user_prompt.j2", b"\xff\xfe{{")], {},
     r"template user_prompt\.j2 cannot be read .*UTF-8"),
    ("template-unknown-variable", lambda t, i: ["--template-dir", _template_dir(t, "user_prompt.j2",
                                                                                b"{{ questoin }}")], {},
     r"user_prompt\.j2 uses an unknown variable: 'questoin' is undefined"),
    ("output-dir-missing", lambda t, i: ["--output_file", str(t / "no" / "such" / "out.parquet")], {},
     r"the directory of OUTPUT_FILE .* does not exist; create it"),
    ("output-dir-not-writable", lambda t, i: ["--output_file", "/proc/out.parquet"], {},
     r"cannot write to /proc"),
    ("output-is-a-directory", lambda t, i: ["--output_file", str(t)], {}, r"is a directory"),
    ("bad-temperature", lambda t, i: [], {"TEMPERATURE": "5"}, r"^error: TEMPERATURE must be between 0 and 2"),
    ("bad-batch-size", lambda t, i: ["--batch_size", "0"], {}, r"--batch_size must be >= 1"),
    ("bad-num-rollouts", lambda t, i: ["--num-rollouts", "0"], {}, r"--num_rollouts must be >= 1"),
]


@pytest.mark.parametrize(("extra", "env_over", "message"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_is_one_line_and_exit_2_before_any_teacher_call(
        env: dict[str, str], real_layout: Path, tmp_path: Path, teacher: tuple[FakeTeacher, Served],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        extra: Callable[[Path, Path], list[str]], env_over: dict[str, str], message: str) -> None:
    for key, value in env_over.items():
        monkeypatch.setenv(key, value)
    argv = ["generate", "--input_file", str(real_layout), "--output_file", str(tmp_path / "out.parquet"),
            *extra(tmp_path, real_layout)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert re.search(message, lines[0]), lines[0]
    assert teacher[0].requests == [] and teacher[0].probes == []  # nothing was sent, not even the probe
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("which", ["teacher", "retrieval"])
def test_a_server_down_at_start_is_reported_with_its_url(env: dict[str, str], real_layout: Path, tmp_path: Path,
                                                         retriever: tuple[FakeRetriever, Served],
                                                         which: str) -> None:
    dead = "http://127.0.0.1:9"  # discard port: connection refused
    url = ["--vllm_url", f"{dead}/v1"] if which == "teacher" else ["--retrieval_url", f"{dead}/retrieve"]
    proc = subprocess.run([sys.executable, "-m", "hfdistill", "generate", "--input_file", str(real_layout),
                           "--output_file", str(tmp_path / "o.parquet"), *url], capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot reach the ")
    assert dead in last and ("start vLLM" in last if which == "teacher" else "start it or fix RETRIEVAL_URL" in last)
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o.parquet").exists()


def test_retrieval_server_speaking_another_api(env: dict[str, str], real_layout: Path, tmp_path: Path,
                                               retriever: tuple[FakeRetriever, Served],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # the original tool's payload mistake in reverse: a server answering 422 to Search-R1 requests
    retriever[0].faults.append(Fault(status=422, body='{"detail": "field required: query_list"}'))
    assert main(["generate", "--input_file", str(real_layout), "--output_file", str(tmp_path / "o.parquet")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "answered HTTP 422" in err and "does not accept Search-R1 requests" in err
