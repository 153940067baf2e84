"""What a failed vLLM's log is quoted by: the root cause, not vLLM's wrappers pointing at it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hfdistill.teacher.serve.logs import last_error_line, last_line, read_since

WORKER = "(Worker pid=9621) ERROR 12-04 20:47:47 [multiproc_executor.py:953] "
CORE = "(EngineCore pid=9610) ERROR 12-04 20:47:49 [core.py:1510] "
MISSING_WEIGHTS = f"""\
(APIServer pid=9598) INFO 12-04 20:47:26 [api_utils.py:347] non-default args: {{'model': '/tmp/bad'}}
{WORKER}WorkerProc failed to start.
{WORKER}Traceback (most recent call last):
{WORKER}  File "loader.py", line 88, in load_model
{WORKER}RuntimeError: Cannot find any model weights with `/tmp/bad`
{CORE}EngineCore failed to start.
{CORE}Exception: WorkerProc initialization failed due to an exception in a background process. See stack trace \
for root cause.
Traceback (most recent call last):
  File "utils.py", line 1431, in wait_for_engine_startup
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {{}}
"""
OOM = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
       "79.19 GiB of which 1.02 GiB is free.")
OUT_OF_MEMORY = f"""\
(EngineCore_DP0 pid=77) ERROR 12-04 20:47:47 [core.py:700]   File "torch/cuda/memory.py", line 12, in alloc
(EngineCore_DP0 pid=77) ERROR 12-04 20:47:47 [core.py:700] {OOM}
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {{}}
"""
USAGE = """\
usage: api_server.py [-h] [--host HOST]
api_server.py: error: unrecognized arguments: --no-such-flag
"""
LOGGED_ONLY = "(APIServer pid=1) INFO 01-01 00:00:00 [a.py:1] up\n(APIServer pid=1) ERROR 01-01 00:00:01 [a.py:2] bad\n"


@pytest.mark.parametrize(("log", "line"), [
    pytest.param(MISSING_WEIGHTS, "RuntimeError: Cannot find any model weights with `/tmp/bad`", id="missing-weights"),
    pytest.param(OUT_OF_MEMORY, OOM, id="cuda-out-of-memory"),
    pytest.param(USAGE, "api_server.py: error: unrecognized arguments: --no-such-flag", id="usage"),
    pytest.param(LOGGED_ONLY, "bad", id="an-error-log-line"),
    pytest.param("(APIServer pid=1) INFO 01-01 00:00:00 [a.py:1] serving\n", "", id="no-error"),
])
def test_the_root_cause_is_the_line_quoted(log: str, line: str) -> None:
    assert last_error_line(log) == line


def test_the_last_line_says_what_a_starting_server_does() -> None:
    log = "--- hfdistill: vllm-0 starting\n(Worker pid=3) INFO 01-01 00:00:00 [w.py:1] Loading weights\r\n\n"
    assert last_line(log) == "Loading weights"
    assert last_line("--- hfdistill: vllm-0 starting at 12:00: python -m vllm...\n") == ""  # ours, not the server's


def test_only_this_start_of_the_server_is_read(tmp_path: Path) -> None:
    log = tmp_path / "vllm-0.log"
    log.write_text(OUT_OF_MEMORY)
    offset = log.stat().st_size
    with log.open("a") as f:
        f.write("(APIServer pid=2) INFO 01-01 00:00:00 [a.py:1] started again\n")
    assert last_error_line(read_since(log, offset)) == ""
    assert read_since(tmp_path / "missing.log", 0) == ""
