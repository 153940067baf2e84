"""The supervisor of one server, with a dummy server: a shell and its `sleep` children, in a process group of their
own, which ignore SIGTERM as a stuck vLLM may. Whatever ends it (the pipe closed by hfdistill, hfdistill killed with
`kill -9`, the server's main process dying, a SIGTERM to the supervisor), no process of the group is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hfdistill.teacher.serve.server import SUPERVISOR
from tests.serve_util import session_members, wait_until

# A "server" whose main process starts two children and, like them, ignores SIGTERM (only SIGKILL ends them).
STUBBORN = ["sh", "-c", 'trap "" TERM; sleep 300 & sleep 300 & wait']
GRACE = 1.0


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The supervisor running STUBBORN; yields it and the server's pid (which leads its session)."""
    proc = subprocess.Popen([sys.executable, "-I", str(SUPERVISOR), "--log", str(tmp_path / "server.log"), "--grace",
                             str(GRACE), "--", *STUBBORN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None
    word, pid = proc.stdout.readline().decode().split()
    assert word == "pid"
    wait_until(lambda: len(session_members(int(pid))) == 3, 10)  # the shell and its two sleeps
    yield proc, int(pid)
    proc.kill()
    for member in session_members(int(pid)):
        os.kill(member, signal.SIGKILL)


def _reports(proc: subprocess.Popen[bytes]) -> list[str]:
    assert proc.stdout is not None
    return proc.stdout.read().decode().split("\n")[:-1]


def test_closing_the_pipe_stops_the_whole_group(supervised: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, pid = supervised
    assert proc.stdin is not None
    proc.stdin.close()
    took = wait_until(lambda: not session_members(pid), GRACE + 10)
    assert _reports(proc) == ["stopped"]
    assert proc.wait(5) == 0
    assert took >= GRACE * 0.8  # SIGTERM was ignored: SIGKILL after the grace


def test_a_server_that_dies_is_reported_at_once_and_what_it_left_is_stopped(
        supervised: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, pid = supervised
    os.kill(pid, signal.SIGKILL)  # the API server alone, as `kill -9 PID` does: its children live on
    wait_until(lambda: not session_members(pid), GRACE + 10)
    assert _reports(proc) == [f"exit {-signal.SIGKILL}", "stopped"]


def test_a_sigterm_to_the_supervisor_stops_the_group(supervised: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, pid = supervised
    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: not session_members(pid), GRACE + 10)
    assert _reports(proc) == ["stopped"]


PARENT = """
import subprocess, sys
sup = subprocess.Popen([sys.executable, "-I", sys.argv[1], "--log", sys.argv[2], "--grace", "1", "--", *sys.argv[3:]],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
print(sup.stdout.readline().decode().split()[1], flush=True)
sup.wait()
"""


def test_kill_9_of_the_parent_leaves_no_process_of_the_group(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(SUPERVISOR), str(tmp_path / "log"), *STUBBORN],
                              stdout=subprocess.PIPE)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    wait_until(lambda: len(session_members(pid)) == 3, 10)
    parent.kill()  # SIGKILL: no handler, no finally, no atexit
    parent.wait()
    took = wait_until(lambda: not session_members(pid), GRACE + 10)
    print(f"the group was gone {took:.1f}s after its parent's kill -9 (grace {GRACE}s)")


def test_a_command_that_cannot_start_is_no_hang(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-I", str(SUPERVISOR), "--log", str(tmp_path / "log"), "--",
                           str(tmp_path / "no-such-program")], capture_output=True, timeout=30, check=False)
    assert done.returncode != 0 and b"no-such-program" in done.stderr
