"""One vLLM server under its supervisor (`supervisor.py`): started, waited for, watched, stopped.

The supervisor is our child; the server is its child, in a process group of its own. We hold the write
end of the supervisor's standard input: closing it (or dying) stops the server. The supervisor's reports
come back on a pipe a thread of ours reads, so a server that dies is known within milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from hfdistill.core.errors import ServeError
from hfdistill.edge import Edge
from hfdistill.teacher.serve.logs import last_error_line, last_line, read_since

__all__ = ["SUPERVISOR", "ServerProcess", "exit_words", "wait_ready"]

log = logging.getLogger(__name__)

SUPERVISOR = Path(__file__).with_name("supervisor.py")
_PROBE_SECONDS = 0.5  # how often a starting server's /health is asked
_STOP_MARGIN = 15.0  # seconds beyond the grace a supervisor may take to report the group stopped


class ServerProcess:
    """One start of one server: `start()`, then `exit_code` once it ended by itself, `stop()` to end it."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str], url: str, log_path: Path, *,
                 grace: float, on_exit: Callable[[ServerProcess], None] | None = None,
                 on_stopped: Callable[[ServerProcess], None] | None = None) -> None:
        self.name = name
        self.command = list(command)
        self.env = dict(env)
        self.url = url  # the server's /v1
        self.log_path = log_path
        self.grace = grace
        self.on_exit = on_exit  # called (from our reader thread) as soon as the server ended by itself
        self.on_stopped = on_stopped  # called (from it) once nothing of the server is left, unless we stopped it
        self.pid: int | None = None  # the API server's, which leads its process group and session
        self.exit_code: int | None = None
        self.started_at = 0.0
        self.offset = 0  # where this start's part of the log begins
        self.stuck = False  # a process of the group outlived SIGKILL
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._done = threading.Event()  # the supervisor ended
        self._lock = threading.Lock()  # a stop asked for while it starts is not missed

    @property
    def health_url(self) -> str:
        return self.url.removesuffix("/v1") + "/health"

    @property
    def ended(self) -> bool:
        """It exited by itself, or it was stopped."""
        return self.exit_code is not None or self._done.is_set()

    def start(self) -> None:
        """Start the supervisor, which starts the server; returns once the server process exists."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.offset = out.tell()
            when = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"--- hfdistill: {self.name} starting at {when}: {_shown(self.command, self.env)}\n".encode())
        env_prefix = ["env", *(f"{k}={v}" for k, v in self.env.items())] if self.env else []
        argv = [sys.executable, "-I", str(SUPERVISOR), "--log", str(self.log_path), "--grace", str(self.grace), "--",
                *env_prefix, *self.command]
        with self._lock:
            if self._stopping:  # stopped before it started: never start it
                self._done.set()
                return
            with self.log_path.open("ab") as err:  # the supervisor's own complaints go to the log too
                self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                              start_new_session=True)
        assert self._proc.stdout is not None
        first = self._proc.stdout.readline().decode().split()
        if first[:1] != ["pid"]:
            self._proc.wait()
            said = last_error_line(self.log_text()) or last_line(self.log_text())
            raise ServeError(f"the supervisor of {self.name} failed to start the server: {said} (log: {self.log_path})")
        self.pid = int(first[1])
        self.started_at = time.monotonic()
        threading.Thread(target=self._read_reports, name=f"hfdistill-{self.name}", daemon=True).start()

    def _read_reports(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            word, _, value = raw.decode().strip().partition(" ")
            if word == "exit":
                self.exit_code = int(value)
                if not self._stopping and self.on_exit is not None:
                    self.on_exit(self)
            elif word == "stuck":
                self.stuck = True
        self._proc.wait()
        if self.exit_code is None and not self._stopping:  # the supervisor itself was killed: do its job
            self.exit_code = -(self._proc.returncode or 1)
            self._kill_group()
            if self.on_exit is not None:
                self.on_exit(self)
        self._done.set()
        if not self._stopping and self.on_stopped is not None:
            self.on_stopped(self)

    def stop(self) -> None:
        """Stop the server (SIGTERM to its group, SIGKILL after the grace) and wait until none of it is left."""
        self.request_stop()
        self.wait_stopped()

    def request_stop(self) -> None:
        """Tell the supervisor to stop the server (several servers stop at once: ask each, then wait)."""
        with self._lock:
            self._stopping = True
            if self._proc is not None and self._proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self._proc.stdin.close()  # the supervisor's signal to stop

    def wait_stopped(self) -> None:
        if self._proc is None:
            return
        if not self._done.wait(self.grace + _STOP_MARGIN):
            log.warning("the supervisor of %s did not stop the server within %.0fs; killing its process group",
                        self.name, self.grace + _STOP_MARGIN)
            self._kill_group()
            with contextlib.suppress(OSError):
                self._proc.kill()
        if self.stuck:
            log.warning("a process of %s (process group %s) outlived SIGKILL; check it with `ps -g %s`", self.name,
                        self.pid, self.pid)

    def _kill_group(self) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def log_text(self) -> str:
        return read_since(self.log_path, self.offset)

    def doing(self) -> str:
        """The last line of its log: what it is busy with while it starts."""
        return last_line(self.log_text())

    def failure(self, what: str, *, starting: bool = False) -> str:
        """`vllm-0 (URL) exited with code 1: <its last error line> (log: PATH)`. Without an error line (a server
        killed from outside) its last line is quoted only while `starting` (it says how far it got)."""
        text = self.log_text()
        said = last_error_line(text) or (last_line(text) if starting else "")
        return f"{self.name} ({self.url}) {what}{': ' + said if said else ''} (log: {self.log_path})"


def exit_words(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


async def wait_ready(server: ServerProcess, edge: Edge, deadline: float, stopping: Callable[[], bool]) -> bool:
    """Poll the server's /health until it answers (True), it ends or we stop (False), or `deadline` (monotonic)
    passes (ServeError). A 4xx answers too: a server that guards /health with its API key is up."""
    while not server.ended and not stopping():
        if time.monotonic() > deadline:
            raise ServeError(server.failure(f"did not answer within {time.monotonic() - server.started_at:.0f}s",
                                           starting=True))
        status = await edge.health(server.health_url, timeout=5)
        if status is not None and (status == 200 or 400 <= status < 500):
            return True
        await asyncio.sleep(_PROBE_SECONDS)
    return False


def _shown(command: Sequence[str], env: Mapping[str, str]) -> str:
    """The command line for the log's header, an --api-key's value masked."""
    shown = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
    for before, part in zip(["", *command], command, strict=False):
        shown.append("***" if before.replace("_", "-") == "--api-key" else shlex.quote(part))
    return " ".join(shown)
