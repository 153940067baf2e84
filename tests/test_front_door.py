"""What a new user meets first: the progress display, start-up checks, and the small commands.

Everything runs the installed `hfdistill` command in a subprocess, as a user would: the progress
display through a pseudo-terminal of 80 columns read back by a terminal emulator (pyte), the
checks with their exit code, their one line and the time they take.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pyte
import pytest

from hfdistill import __version__
from hfdistill.core.errors import RetrievalError
from hfdistill.edge import Server
from hfdistill.retrieval.http import _refusal
from tests.conftest import write_jsonl
from tests.fakes import FakeRetriever, FakeTeacher, Served, TeacherBehaviour

HFDISTILL = [sys.executable, "-m", "hfdistill"]
PROGRESS_BAR = re.compile(r"\d+%\|")
PROGRESS_LINE = re.compile(r"^\[hfdistill\] \d+/\d+ rollouts \(\d+\.\d%\)")


@pytest.fixture
def slow_servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A teacher that takes 50 ms per completion, so a run lasts long enough to be watched."""
    teacher, retriever = FakeTeacher(TeacherBehaviour(delay=0.05)), FakeRetriever()
    served = [Served(teacher.app()), Served(retriever.app())]
    env = {**os.environ, "VLLM_URL": f"{served[0].url}/v1", "RETRIEVAL_URL": f"{served[1].url}/retrieve"}
    for key in ("MAX_ASSISTANT_TURNS", "MAX_SAMPLES", "INPUT_FILE", "OUTPUT_FILE", "BATCH_SIZE", "TEMPERATURE",
                "MAX_TOKENS"):
        env.pop(key, None)
    yield env
    for s in served:
        s.close()


def _questions(tmp_path: Path, n: int) -> Path:
    return write_jsonl(tmp_path / "q.jsonl", [{"question": f"What is the capital of France, take {i}?",
                                              "golden_answers": ["Paris"]} for i in range(n)])


def _run_in_terminal(argv: list[str], env: dict[str, str], cwd: Path, columns: int = 80,
                     rows: int = 24) -> tuple[int, pyte.HistoryScreen]:
    """Run `argv` on a pseudo-terminal of `columns` x `rows`; return its exit code and the screen,
    scrollback included, as a terminal would show it."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env={**env, "TERM": "xterm"},
                            cwd=cwd, close_fds=True)
    os.close(slave)
    screen = pyte.HistoryScreen(columns, rows, history=10_000)
    stream = pyte.ByteStream(screen)
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        stream.feed(data.replace(b"\n", b"\r\n"))  # the terminal's onlcr, which a pty applies to output
    os.close(master)
    return proc.wait(timeout=60), screen


def _all_lines(screen: pyte.HistoryScreen) -> list[str]:
    history = ["".join(line[x].data for x in range(screen.columns)).rstrip() for line in screen.history.top]
    return history + [line.rstrip() for line in screen.display]


def test_progress_in_an_80_column_terminal_is_one_bar(slow_servers: dict[str, str], tmp_path: Path) -> None:
    questions = _questions(tmp_path, 60)
    code, screen = _run_in_terminal([*HFDISTILL, "generate", "--input_file", str(questions), "--concurrency", "8"],
                                    slow_servers, tmp_path)
    lines = _all_lines(screen)
    text = "\n".join(lines)
    assert code == 0, text
    bars = [line for line in lines if PROGRESS_BAR.search(line)]
    assert len(bars) == 1, text  # redrawn in place: no stale copies, no wrapped halves
    assert bars[0].startswith("100%|") and "60/60" in bars[0] and "0 failed" in bars[0], bars[0]
    assert not any(PROGRESS_LINE.match(line) for line in lines), text  # no log-style progress line on a terminal
    assert "[hfdistill] done in" in text and "stop reasons: answer 60" in text


def test_progress_to_a_pipe_is_a_line_every_interval_and_one_at_the_end(slow_servers: dict[str, str],
                                                                          tmp_path: Path) -> None:
    questions = _questions(tmp_path, 60)  # 60 rollouts x 2 turns x 50 ms / 8 at a time: ≥ 0.75 s
    done = subprocess.run([*HFDISTILL, "generate", "--input_file", str(questions), "--concurrency", "8",
                           "--log-interval", "0.1"], env=slow_servers, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if PROGRESS_LINE.match(line)]
    periodic, final = lines[:-1], lines[-1]
    assert len(periodic) >= 2, done.stderr
    assert all("ETA" in line and "| elapsed" in line for line in periodic)
    assert final.startswith("[hfdistill] 60/60 rollouts (100.0%) | elapsed") and "ETA" not in final
    assert "\r" not in done.stderr and "%|" not in done.stderr  # no bar, no carriage returns in a log
    assert sum("60/60 rollouts" in line for line in lines) == 1  # the final line once


def test_quiet_has_no_progress_but_the_summary(slow_servers: dict[str, str], tmp_path: Path) -> None:
    questions = _questions(tmp_path, 4)
    code, screen = _run_in_terminal([*HFDISTILL, "generate", "-q", "--input_file", str(questions)], slow_servers,
                                    tmp_path)
    text = "\n".join(_all_lines(screen))
    assert code == 0, text
    assert not PROGRESS_BAR.search(text) and not PROGRESS_LINE.search(text) and "stop reasons: answer 4" in text


# ---------------------------------------------------------------- start-up checks


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# The input checks run before `datasets` is imported: well under 2 s. The others come after the
# heavier imports but before any server is contacted.
@pytest.mark.parametrize(("args", "env", "code", "message", "seconds"), [
    pytest.param(["--input_file", "questions.jsnol"], {}, 2,
                 r"^error: input file not found: questions\.jsnol \(did you mean questions\.jsonl\?\)",
                 2.0, id="typo-suffix-never-goes-to-the-hub"),
    pytest.param([], {"INPUT_FILE": "data/train.parquett"}, 2, r"^error: input file not found: data/train\.parquett",
                 2.0, id="default-layout-typo"),
    pytest.param(["--input_file", "empty.jsonl"], {}, 2, r"^error: input empty\.jsonl is an empty file",
                 2.0, id="empty-file"),
    pytest.param(["--input_file", "cut.parquet"], {}, 2, r"^error: cannot read cut\.parquet as parquet: ",
                 2.0, id="truncated-parquet"),
    pytest.param(["--input_file", "questions.jsonl"], {"MAX_ASSISTANT_TURNS": "0"}, 2,
                 r"^error: MAX_ASSISTANT_TURNS must be >= 1, got 0$", 2.0, id="env-var-named"),
    pytest.param(["--input_file", "questions.jsonl", "--push-to-hub", "me/data"], {}, 2,
                 r"^error: no Hugging Face token found; log in with `hf auth login`", 10.0, id="push-without-token"),
])
def test_start_up_checks_are_one_line_and_fast(tmp_path: Path, args: list[str], env: dict[str, str], code: int,
                                               message: str, seconds: float) -> None:
    write_jsonl(tmp_path / "questions.jsonl", [{"question": "Who?", "golden_answers": ["A"]}])
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "cut.parquet").write_bytes(b"PAR1\x00\x01")
    # No server anywhere (the checks come first), no Hub token, no network for the Hub.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "VLLM_URL", "RETRIEVAL"))}
    clean.update({"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9", **env})
    start = time.monotonic()
    done = subprocess.run([*HFDISTILL, "generate", *args], env=clean, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    elapsed = time.monotonic() - start
    lines = _error_lines(done.stderr)
    assert done.returncode == code, done.stderr
    assert len(lines) == 1, done.stderr
    assert re.search(message, lines[0]), lines[0]
    assert elapsed < seconds, f"{elapsed:.2f} s"


def test_a_retrieval_url_at_the_wrong_server_says_so(env: dict[str, str], teacher: tuple[FakeTeacher, Served],
                                                     tmp_path: Path) -> None:
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question": "Who?"}])
    wrong = {**os.environ, **env, "RETRIEVAL_URL": f"{teacher[1].url}/retrieve"}  # the teacher's server
    done = subprocess.run([*HFDISTILL, "generate", "--input_file", str(questions), "--max-retries", "0"], env=wrong,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: retrieval server") and "HTTP 404" in last
    assert "is the retrieval server's /retrieve endpoint" in last and "Traceback" not in done.stderr


@pytest.mark.parametrize(("status", "url", "vllm"), [
    pytest.param(404, "http://127.0.0.1:8000/retrieve", True, id="404-on-vllms-port"),
    pytest.param(405, "http://localhost:8000/retrieve", True, id="405-on-vllms-port"),
    pytest.param(404, "http://127.0.0.1:8001/retrieve", False, id="404-elsewhere"),
])
def test_a_404_on_vllms_port_names_the_vllm_server(status: int, url: str, vllm: bool) -> None:
    """RETRIEVAL_URL's default port (8000) is vLLM's, and vLLM answers 404 for POST /retrieve."""
    error = _refusal(Server("retrieval", url, RetrievalError), status, b'{"detail":"Not Found"}', None)
    assert error is not None and error.cause == f"retrieval_http_{status}" and not error.transient
    message = str(error)
    assert f"answered HTTP {status}" in message and "/retrieve endpoint" in message
    assert ("probably points at the vLLM server" in message) is vllm
    assert ("RETRIEVAL_URL=http://127.0.0.1:8001/retrieve" in message) is vllm


# ---------------------------------------------------------------- small commands


def test_version() -> None:
    done = subprocess.run([*HFDISTILL, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"hfdistill {__version__}"


def test_inspect_into_a_closed_pipe_is_quiet(distilled_file: Path, tmp_path: Path) -> None:
    """`hfdistill inspect OUT -n 1000 | head -1`: more output than the pipe holds, reader gone."""
    table = pq.read_table(distilled_file)
    big = tmp_path / "big.parquet"
    pq.write_table(pa.concat_tables([table] * 300), big)
    inspect = subprocess.Popen([*HFDISTILL, "inspect", str(big), "-n", "900"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert inspect.stdout is not None
    assert inspect.stdout.readline()
    inspect.stdout.close()
    _, err = inspect.communicate(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert inspect.returncode == 141  # as a tool killed by SIGPIPE


@pytest.fixture
def distilled_file(env: dict[str, str], tmp_path: Path) -> Path:
    """A real output: three conversations made by the scripted teacher."""
    from hfdistill.cli.main import main
    from tests.conftest import write_verl_parquet

    source = write_verl_parquet(tmp_path / "train.parquet")
    assert main(["generate", "-q", "--input_file", str(source), "--output_file", str(tmp_path / "o.parquet")]) == 0
    return tmp_path / "o.parquet"


def test_a_readme_without_metadata_is_merged_without_a_hub_warning(distilled_file: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from hfdistill.publish.card import load_card_inputs
    from hfdistill.publish.merge import merge_card

    record, sample = load_card_inputs(distilled_file)
    with caplog.at_level("WARNING"):
        merged = merge_card("# My notes\n\nWritten by hand.\n", record, sample)
    assert "Written by hand." in merged.text and merged.text.startswith("---\n")
    assert not [r for r in caplog.records if "metadata block" in r.getMessage()]
