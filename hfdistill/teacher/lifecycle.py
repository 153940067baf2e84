"""Whether each teacher server hfdistill runs itself is up, being restarted, or given up.

A launcher (`teacher.serve.fleet`, or a Ray node's host) writes it as its servers die and come back; the
teacher reads it on every request to route around a restarting server and to wait for one rather than
spend its retries on it. URLs it does not list are the user's own servers, which nobody restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["GONE", "RESTARTING", "UP", "ServerStates"]

UP = "up"
RESTARTING = "restarting"  # died, and is being started again: its requests wait for it
GONE = "gone"  # given up (restarted too often, or its node was lost): its requests fail


@dataclass
class ServerStates:
    """URL (the server's /v1) -> (state, why). Written from launcher threads, read from event loops: each
    entry is replaced whole, so a reader never needs a lock."""

    entries: dict[str, tuple[str, str]] = field(default_factory=dict)

    def set(self, url: str, state: str, reason: str = "") -> None:
        if state not in (UP, RESTARTING, GONE):
            raise ValueError(f"unknown server state {state!r}")
        self.entries[url.rstrip("/")] = (state, reason)

    def state(self, url: str) -> str | None:
        """UP, RESTARTING or GONE; None for a server hfdistill does not run."""
        entry = self.entries.get(url)
        return entry[0] if entry is not None else None

    def reason(self, url: str) -> str:
        entry = self.entries.get(url)
        return entry[1] if entry is not None else ""

    def update(self, entries: dict[str, tuple[str, str]]) -> None:
        """Take another process's view (a Ray worker reading the run's board)."""
        for url, (state, reason) in entries.items():
            self.set(url, state, reason)
