"""A real Ray cluster on loopback for the Ray engine's tests (docs/ray.md): a head and a second raylet.

Every process the cluster starts carries its own temporary directory in its command line (the
session directory), or descends from one that does; `stop` kills exactly those, by pid, so nothing
else on the machine is touched (`ray stop` would stop every Ray process of the user).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
# Token authentication is on by default in Ray 2.60; a loopback test cluster does without it.
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A head node (1 CPU) and any number of extra raylets (1 CPU each) joined to it."""

    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hfr-", dir="/tmp")))
    port: int = field(default_factory=free_port)
    nodes: list[int] = field(default_factory=list)  # node manager ports of the extra raylets
    env: dict[str, str] = field(default_factory=lambda: dict(ENV))  # the raylets', so their workers' and children's

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Cluster:
        self._ray("start", "--head", "--port", str(self.port), "--num-cpus", "1", "--include-dashboard=false",
                  "--temp-dir", str(self.temp_dir))
        return self

    def add_node(self) -> int:
        """Join one more raylet; returns its node manager port (see `raylet_pid`)."""
        port = free_port()
        self._ray("start", "--address", self.address, "--num-cpus", "1", "--node-manager-port", str(port))
        self.nodes.append(port)
        return port

    def raylet_pid(self, node_port: int) -> int:
        marker = f"--node_manager_port={node_port}".encode()
        for pid, cmdline, _ in _processes():
            if b"raylet/raylet" in cmdline and marker in cmdline and self._ours(cmdline):
                return pid
        raise LookupError(f"no raylet with node manager port {node_port}")

    def remove_node(self, node_port: int) -> None:
        """Kill an extra raylet and its workers (if still alive); the head marks the node dead."""
        with contextlib.suppress(LookupError):  # killed by the test already
            _kill_trees({self.raylet_pid(node_port)})

    def stop(self) -> None:
        """SIGKILL every process of this cluster (and their children), by pid, then remove its directory."""
        for _ in range(3):  # a dying raylet's workers may be re-parented while we look: look again
            ours = {pid for pid, cmdline, _ in _processes() if self._ours(cmdline) and pid != os.getpid()}
            if not _kill_trees(ours):
                break
            time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _ours(self, cmdline: bytes) -> bool:
        return str(self.temp_dir).encode() in cmdline

    def _ray(self, *args: str) -> None:
        argv = [RAY, *args, "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def _kill_trees(roots: set[int]) -> set[int]:
    """SIGKILL these processes and all their descendants, by pid; returns the pids signalled."""
    procs = _processes()
    ours = set(roots)
    grown = True
    while grown:
        children = {pid for pid, _, ppid in procs if ppid in ours and pid not in ours}
        ours |= children
        grown = bool(children)
    for pid in ours:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return ours


def _processes() -> list[tuple[int, bytes, int]]:
    """(pid, command line, parent pid) of every process we can read."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.append((int(entry), cmdline, ppid))
    return out
