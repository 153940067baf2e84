"""A run's promises, end to end with real processes and files: one owner, identity by content,
blank questions, a damaged journal, a verified output, conversations resumed mid-way."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hfdistill.cli.main import main
from tests.conftest import record_of, write_jsonl
from tests.fakes import Answer, FakeTeacher, Search, Served

FAST = ["--tool-call-mode", "native", "--retry-backoff", "0.05", "--max-retries", "3"]


def _questions(n: int) -> list[str]:
    return [f"Question number {i} about France?" for i in range(n)]


def _input(path: Path, questions: list[str]) -> Path:
    return write_jsonl(path, [{"question": q, "golden_answers": ["Paris"]} for q in questions])


def _generate(inp: Path, out: Path, *extra: str) -> int:
    return main(["generate", "--input_file", str(inp), "--output_file", str(out), *FAST, *extra])


def _keys(out: Path) -> list[tuple[int, int]]:
    table = pq.read_table(out, columns=["input_index", "rollout_index"])
    return list(zip(table["input_index"].to_pylist(), table["rollout_index"].to_pylist(), strict=True))


def _journal(out: Path) -> Path:
    [journal] = out.parent.glob(f".hfdistill/{out.name}-*/journal.jsonl")
    return journal


def _spawn(inp: Path, out: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hfdistill", "generate", "--input_file", str(inp),
                             "--output_file", str(out), *FAST, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


# ---------------------------------------------------------------- one owner per output


def test_two_processes_on_one_output_never_both_write(env: dict[str, str], tmp_path: Path,
                                                     teacher: tuple[FakeTeacher, Served]) -> None:
    teacher[0].behaviour.delay = 0.1
    n = 30
    inp, out = _input(tmp_path / "in.jsonl", _questions(n)), tmp_path / "o.parquet"
    first = _spawn(inp, out, env, "--concurrency", "2")
    time.sleep(0.5)
    second = _spawn(inp, out, env, "--concurrency", "2")
    results = [(p.pid, p.wait(120), p.communicate()[1]) for p in (first, second)]
    assert _keys(out) == [(i, 0) for i in range(n)]  # every row exactly once
    assert teacher[0].chat_calls == 2 * n  # one writer: nothing was generated twice
    refused = [(pid, err) for pid, code, err in results if code != 0]
    assert len(refused) == 1, results  # the one that came second refused at once
    [(_, err)] = refused
    winner = next(pid for pid, code, _ in results if code == 0)
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert f"is being written by another hfdistill process (pid {winner} " in line and "rerun this command" in line
    assert "Traceback" not in err


def test_a_killed_owner_releases_the_output(env: dict[str, str], tmp_path: Path,
                                            teacher: tuple[FakeTeacher, Served]) -> None:
    teacher[0].behaviour.delay = 0.2
    inp, out = _input(tmp_path / "in.jsonl", _questions(6)), tmp_path / "o.parquet"
    proc = _spawn(inp, out, env, "--concurrency", "1")
    deadline = time.monotonic() + 60
    while not teacher[0].requests and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    teacher[0].behaviour.delay = 0.0
    assert _generate(inp, out) == 0  # the OS dropped the dead process's lock
    assert _keys(out) == [(i, 0) for i in range(6)]


# ---------------------------------------------------------------- identity by content


def test_growing_max_samples_and_touching_or_copying_the_input_reuse_every_rollout(
        env: dict[str, str], tmp_path: Path, teacher: tuple[FakeTeacher, Served],
        capsys: pytest.CaptureFixture[str]) -> None:
    fake = teacher[0]
    inp, out = _input(tmp_path / "in.jsonl", _questions(300)), tmp_path / "o.parquet"
    assert _generate(inp, out, "--max_samples", "100") == 0
    assert fake.chat_calls == 2 * 100 and len(_keys(out)) == 100
    assert _generate(inp, out, "--max_samples", "300") == 0
    assert fake.chat_calls == 2 * 300  # only the 200 new questions went to the teacher
    assert _keys(out) == [(i, 0) for i in range(300)]
    calls, requests = fake.chat_calls, len(fake.requests)
    os.utime(inp, (time.time() + 60, time.time() + 60))
    capsys.readouterr()
    assert _generate(inp, out, "--max_samples", "-1") == 0
    assert "already complete" in capsys.readouterr().err
    copy = shutil.copy(inp, tmp_path / "copy.jsonl")
    assert _generate(Path(copy), out) == 0
    assert (fake.chat_calls, len(fake.requests)) == (calls, requests)  # not even a probe

    # a shorter prefix is another input: the output is rewritten from the journal, at no teacher cost
    assert _generate(inp, out, "--max_samples", "50") == 0
    assert fake.chat_calls == calls and _keys(out) == [(i, 0) for i in range(50)]


def test_a_changed_rollout_option_is_refused_by_name(env: dict[str, str], tmp_path: Path,
                                                    teacher: tuple[FakeTeacher, Served],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    inp, out = _input(tmp_path / "in.jsonl", _questions(3)), tmp_path / "o.parquet"
    assert _generate(inp, out) == 0
    capsys.readouterr()
    assert _generate(inp, out, "--temperature", "0.9") == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error:") and "temperature 0.7 (now 0.9)" in line and "--overwrite" in line
    assert _generate(inp, out, "--keep", "answered") == 0  # an output-time option is not a rollout option


def test_reordered_and_duplicated_questions_keep_their_own_rollouts(env: dict[str, str], tmp_path: Path,
                                                                   teacher: tuple[FakeTeacher, Served]) -> None:
    qs = _questions(3)
    out = tmp_path / "o.parquet"
    assert _generate(_input(tmp_path / "a.jsonl", qs), out) == 0
    assert teacher[0].chat_calls == 6
    # the same questions in another order, plus a repeat of one: only the repeat is new
    assert _generate(_input(tmp_path / "b.jsonl", [qs[2], qs[0], qs[1], qs[0]]), out) == 0
    assert teacher[0].chat_calls == 8
    rows = pq.read_table(out).to_pylist()
    assert [r["question"] for r in rows] == [qs[2], qs[0], qs[1], qs[0]]
    assert len(_journal(out).read_text().splitlines()) == 4  # the repeat has rollouts of its own


# ---------------------------------------------------------------- blank questions


def test_blank_questions_are_skipped_counted_and_listed_and_the_run_is_complete(
        env: dict[str, str], tmp_path: Path, teacher: tuple[FakeTeacher, Served],
        capsys: pytest.CaptureFixture[str]) -> None:
    qs = _questions(3)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"question": qs[0], "golden_answers": ["Paris"]},
                                              {"question": "   ", "golden_answers": ["x"]},
                                              {"question": qs[2], "golden_answers": ["Paris"]}])
    out = tmp_path / "o.parquet"
    assert _generate(inp, out) == 0
    err = capsys.readouterr().err
    assert "skipped questions 1 (blank)" in err and "incomplete" not in err
    assert _keys(out) == [(0, 0), (2, 0)]
    assert not out.with_name("o.failures.jsonl").exists()
    skipped = [json.loads(line) for line in out.with_name("o.skipped.jsonl").read_text().splitlines()]
    assert skipped == [{"input_index": 1, "reason": "blank question"}]
    record = record_of(out)
    assert record.complete and record.input.skipped == 1 and record.counts.questions_skipped == 1
    calls = len(teacher[0].requests)
    assert _generate(inp, out) == 0
    assert "already complete" in capsys.readouterr().err and len(teacher[0].requests) == calls


# ---------------------------------------------------------------- a damaged journal, a damaged output


def test_a_corrupt_journal_line_costs_only_its_rollout(env: dict[str, str], tmp_path: Path,
                                                      teacher: tuple[FakeTeacher, Served],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    n = 6
    inp, out = _input(tmp_path / "in.jsonl", _questions(n)), tmp_path / "o.parquet"
    assert _generate(inp, out) == 0
    journal = _journal(out)
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"v": 2, "t": "rollout", "k": "damaged by a stray write\n'
    journal.write_bytes(b"".join(lines))
    out.unlink()
    calls = teacher[0].chat_calls
    capsys.readouterr()
    assert _generate(inp, out) == 0
    assert "skipped 1 unreadable record(s) at line 3" in capsys.readouterr().err
    assert teacher[0].chat_calls - calls == 2  # that one rollout, generated again
    assert _keys(out) == [(i, 0) for i in range(n)]


def test_a_complete_output_is_verified_before_it_is_trusted(env: dict[str, str], tmp_path: Path,
                                                           teacher: tuple[FakeTeacher, Served],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    inp, out = _input(tmp_path / "in.jsonl", _questions(4)), tmp_path / "o.parquet"
    assert _generate(inp, out) == 0
    # the file loses rows behind hfdistill's back but keeps its record (e.g. a bad copy)
    table, metadata = pq.read_table(out), pq.read_metadata(out).metadata
    kept_record = {**table.schema.metadata, b"hfdistill": metadata[b"hfdistill"]}
    pq.write_table(table.slice(0, 2).replace_schema_metadata(kept_record), out)
    calls = len(teacher[0].requests)
    capsys.readouterr()
    assert _generate(inp, out) == 0
    assert "holds 2 rows but its record promises 4" in capsys.readouterr().err
    assert _keys(out) == [(i, 0) for i in range(4)]
    assert len(teacher[0].requests) == calls  # rebuilt from the journal, no server contacted


# ---------------------------------------------------------------- conversations resumed mid-way


def test_a_killed_conversation_continues_from_its_last_finished_turn(env: dict[str, str], tmp_path: Path,
                                                                    teacher: tuple[FakeTeacher, Served]) -> None:
    fake = teacher[0]
    q = "Which river flows through Paris?"
    fake.script(q, Search(["river Paris"]), Search(["Seine length"]), Search(["Seine source"]), Answer("Seine"))
    inp, out = _input(tmp_path / "in.jsonl", [q]), tmp_path / "o.parquet"
    fake.question_delay[q] = 0.3
    proc = _spawn(inp, out, env, "--max_assistant_turns", "4")
    deadline = time.monotonic() + 60
    while fake.chat_calls < 3 and time.monotonic() < deadline:  # two turns done, the third asked
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.01)
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    turns = _journal(out).with_name("turns.jsonl")
    recorded = len(turns.read_text().splitlines())
    assert recorded >= 2  # the finished turns were recorded
    fake.question_delay[q] = 0.0
    before = len(fake.requests)
    assert _generate(inp, out, "--max_assistant_turns", "4") == 0
    resumed = fake.requests[before:]
    # the rerun did not start over: it asked only for the turns left, its first request holding the earlier ones
    assert len(resumed) == 4 - recorded
    assert sum(m["role"] == "tool" for m in resumed[0]["messages"]) == recorded
    [row] = pq.read_table(out).to_pylist()
    assert row["assistant_turns"] == 4 and row["num_tool_calls"] == 3 and row["stop_reason"] == "answer"
    assert [m["role"] for m in row["messages"]] == ["system", "user"] + ["assistant", "tool"] * 3 + ["assistant"]
    assert not turns.exists()  # turn records go once their rollout is journaled
