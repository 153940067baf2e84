"""The supervisor of one vLLM server: a small process that outlives hfdistill long enough to stop the server.

    python -I supervisor.py --log LOG --grace SECONDS -- COMMAND...

hfdistill starts it in a session of its own, so a Ctrl-C in the terminal reaches hfdistill (which stops the
servers in order) and not the supervisor. It starts COMMAND in another session and process group, its
output appended to LOG, and stops that whole group (SIGTERM, then SIGKILL after the grace) when its
standard input closes: when hfdistill asks it to (closing the pipe), and when hfdistill dies in any way,
`kill -9` included, since the kernel closes a dead process's end of the pipe. vLLM's API server starts an
engine core that starts the workers holding the GPUs; killing the API server alone leaves those alive, so
only the group is signalled. As a child subreaper (Linux) it also adopts and reaps whatever of the group
outlives its parents, so "stopped" means no process of the group is left.

It reports on standard output, one line each: `pid N` once the server runs, `exit CODE` as soon as the
server's main process ends by itself (before the group is cleaned up, so a restart can be planned at
once), then `stopped` when no process of the group is left (`stuck` when one outlived SIGKILL).
Standard library only, run with `-I`, so it starts in a few tens of milliseconds and depends on nothing
that could be half-installed.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import select
import signal
import subprocess
import sys
import time

__all__ = ["main"]

_PR_SET_CHILD_SUBREAPER = 36
_POLL_SECONDS = 0.2  # without pidfd_open (Linux < 5.3): how often the child is looked at
_KILL_SECONDS = 60.0  # how long SIGKILL may take to empty the group before we say it is stuck


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    _become_subreaper()

    with open(args.log, "ab", buffering=0) as log:
        child = subprocess.Popen(args.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)

    def on_signal(_signum: int, _frame: object) -> None:
        raise _Stop

    for signum in (signal.SIGTERM, signal.SIGHUP):  # someone stopping the supervisor itself
        signal.signal(signum, on_signal)
    _report(f"pid {child.pid}")
    try:
        code = _watch(child)
    except _Stop:  # SIGTERM or SIGHUP (a closing terminal): stop the server as if asked to
        code = None
    if code is not None:
        _report(f"exit {code}")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # from here on nothing interrupts the clean-up
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _report("stopped" if _stop_group(child.pid, args.grace) else "stuck")
    return 0


class _Stop(Exception):
    """Raised by the signal handler: a blocking select() is resumed by Python after a signal, not ended."""


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="supervisor")
    p.add_argument("--log", required=True)
    p.add_argument("--grace", type=float, default=20.0)
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        p.error("no command to supervise")
    return args


def _become_subreaper() -> None:
    """Orphans of the group are re-parented to us (not to init), so we can reap them: a zombie still counts
    as a member of its group."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: orphans go to init, which reaps them itself
        return


def _report(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # hfdistill is gone: nobody to tell, now or at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _watch(child: subprocess.Popen[bytes]) -> int | None:
    """Until the child exits (its code) or the pipe from hfdistill closes (None)."""
    stdin = sys.stdin.fileno()
    pidfd = _pidfd(child.pid)
    try:
        while True:
            watched = [stdin] + ([pidfd] if pidfd is not None else [])
            ready, _, _ = select.select(watched, [], [], None if pidfd is not None else _POLL_SECONDS)
            if stdin in ready and not _drain(stdin):
                return None  # the pipe closed: hfdistill asked us to stop, or died
            code = child.poll()
            if code is not None:
                return code
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _drain(fd: int) -> bool:
    """Read what hfdistill wrote (nothing is expected); False at end of file."""
    try:
        return bool(os.read(fd, 4096))
    except OSError:
        return False


def _stop_group(pgid: int, grace: float) -> bool:
    """SIGTERM the group, SIGKILL it after `grace`, and reap until none of it is left; False when some of it
    outlived SIGKILL for a minute (a process stuck in the kernel, a GPU driver call say)."""
    if _signal_group(pgid, signal.SIGTERM):
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _reap_and_check(pgid):
            time.sleep(0.1)
    deadline = time.monotonic() + _KILL_SECONDS
    while _signal_group(pgid, signal.SIGKILL):
        if not _reap_and_check(pgid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _signal_group(pgid: int, signum: int) -> bool:
    """Whether the group had a member to signal."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal (cannot happen for our own children): stop trying
        return False
    return True


def _reap_and_check(pgid: int) -> bool:
    """Reap every child that has exited (ours, and orphans we adopted); whether the group still has members."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError as e:
        return e.errno == errno.EPERM
    return True


if __name__ == "__main__":
    raise SystemExit(main())
