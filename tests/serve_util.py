"""Helpers for the tests of the servers hfdistill starts: processes by session, waiting, and the stand-in vLLM.

`fake_vllm(monkeypatch, tmp_path)` puts `tests/fake_vllm` (a module named like vLLM's server, serving the scripted
FakeTeacher) on the PYTHONPATH the servers inherit; `--vllm-python sys.executable` then starts it instead of vLLM.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
FAKE_VLLM = REPO / "tests" / "fake_vllm"


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`, read from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry))
    return members


def wait_until(check: Callable[[], object], timeout: float, what: str = "") -> float:
    """Seconds until `check()` is true; fails after `timeout`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"not within {timeout}s: {what}"
        time.sleep(0.05)
    return time.monotonic() - start


@dataclass
class FakeVllm:
    """What the stand-in servers recorded: one entry per start and per chat request of a rollout."""

    record: Path

    def entries(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def starts(self) -> list[dict[str, Any]]:
        return [e for e in self.entries() if "start" in e]

    def chats(self) -> list[dict[str, Any]]:
        return [e for e in self.entries() if "chat" in e]

    def sessions(self) -> list[int]:
        """The session of every start (each server leads one), and of its "engine core" child."""
        return [e["pid"] for e in self.starts()]

    def left(self) -> list[int]:
        """Processes of any start still alive: the servers and their engine-core children."""
        members = [m for sid in self.sessions() for m in session_members(sid)]
        return members + [e["engine_pid"] for e in self.starts() if alive(e["engine_pid"])]


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def fake_vllm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> FakeVllm:
    """Servers started from now on (they inherit this environment) are the stand-in, recording into tmp_path."""
    fake = FakeVllm(tmp_path / "fake-vllm.jsonl")
    monkeypatch.setenv("PYTHONPATH", f"{FAKE_VLLM}{os.pathsep}{REPO}")
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(fake.record))
    for key in ("FAKE_VLLM_FAIL", "FAKE_VLLM_DELAY", "FAKE_VLLM_SLOW", "VLLM_URL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return fake


def model_dir(tmp_path: Path, model_type: str = "qwen3_moe", window: int = 4096) -> Path:
    """A model directory as far as hfdistill reads one (config.json); the stand-in server loads nothing."""
    directory = tmp_path / "Tongyi-DeepResearch-tiny"
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": model_type, "max_position_embeddings": window}))
    return directory
