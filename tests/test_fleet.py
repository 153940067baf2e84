"""The teacher's servers, with the stand-in vLLM (tests/fake_vllm): started together, one restarted alone when it
dies (the restart bookkeeping: states, counts, the budget), a failed start quoted, and nothing left after a stop."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from hfdistill.core.errors import ServeError, ServerLostError
from hfdistill.teacher.lifecycle import GONE, RESTARTING, UP
from hfdistill.teacher.serve.fleet import Fleet
from hfdistill.teacher.serve.plan import ServePlan
from tests.serve_util import alive, fake_vllm, wait_until

OOM = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has 1.02 GiB free."


def _plan(replicas: tuple[tuple[str, ...], ...] = (("0",), ("1",)), **kw: object) -> ServePlan:
    return ServePlan(model="tiny", python=sys.executable, flags=("--scheduling-policy", "priority"),
                     replicas=replicas, stop_grace=2.0, **kw)  # type: ignore[arg-type]


def test_servers_start_on_their_gpus_and_stop_leaving_nothing(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    fake = fake_vllm(monkeypatch, tmp_path)
    with Fleet(_plan(), tmp_path / "logs", progress=False) as fleet:
        urls = fleet.start()
        assert len(set(urls)) == 2 and all(fleet.states.state(u) == UP for u in urls)
        starts = {s["gpus"]: s["start"] for s in fake.starts()}
        assert sorted(starts) == ["0", "1"]
        assert all(s[:2] == ["--model", "tiny"] and s[-2:] == ["--scheduling-policy", "priority"]
                   for s in starts.values())
        assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["vllm-0.log", "vllm-1.log"]
    assert fake.left() == []


def _kill_server(fleet: Fleet, name: str) -> None:
    server = next(s for s in fleet.servers if s.name == name)
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)  # the API server alone: its "engine core" lives on until the group is stopped


def test_a_dead_server_is_restarted_alone_on_its_port(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = fake_vllm(monkeypatch, tmp_path)
    with Fleet(_plan(), tmp_path, progress=False) as fleet:
        urls = fleet.start()
        first = {s["pid"]: s["engine_pid"] for s in fake.starts()}
        _kill_server(fleet, "vllm-0")
        noticed = wait_until(lambda: fleet.states.state(urls[0]) == RESTARTING, 5, "marked restarting")
        assert fleet.states.state(urls[1]) == UP
        assert "was killed by SIGKILL" in fleet.states.reason(urls[0]) and "vllm-0.log" in fleet.states.reason(urls[0])
        wait_until(lambda: fleet.states.state(urls[0]) == UP, 30, "back up")
        assert fleet.urls == urls and fleet.restarts == {"vllm-0": 1, "vllm-1": 0}
        again = [s for s in fake.starts() if s["pid"] not in first]
        assert len(again) == 1 and again[0]["gpus"] == "0"  # the same GPUs, the same port
        assert again[0]["start"] == next(s["start"] for s in fake.starts() if s["pid"] in first and s["gpus"] == "0")
        assert not alive(next(s["engine_pid"] for s in fake.starts() if s["pid"] in first and s["gpus"] == "0"))
    print(f"a death was marked within {noticed * 1000:.0f} ms")
    assert noticed < 2.0
    assert fake.left() == []


def test_one_death_too_many_gives_the_server_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = fake_vllm(monkeypatch, tmp_path)
    lost: list[ServerLostError] = []
    with Fleet(_plan(replicas=((),), max_restarts=1), tmp_path, progress=False, on_lost=lost.append) as fleet:
        [url] = fleet.start()
        _kill_server(fleet, "vllm-0")
        wait_until(lambda: fleet.states.state(url) == RESTARTING, 5)
        wait_until(lambda: fleet.states.state(url) == UP, 30)
        _kill_server(fleet, "vllm-0")
        wait_until(lambda: fleet.states.state(url) == GONE, 5, "given up")
        assert len(lost) == 1 and fleet.failure is lost[0]
        assert "after 1 restart(s)" in str(lost[0]) and "vllm-0.log" in str(lost[0])
        time.sleep(1)
        assert len(fake.starts()) == 2  # never started a third time
    assert fake.left() == []


def test_a_server_that_cannot_start_is_one_error_quoting_its_log(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    fake = fake_vllm(monkeypatch, tmp_path, FAKE_VLLM_FAIL=OOM)
    fleet = Fleet(_plan(), tmp_path, progress=False)
    started = time.monotonic()
    with pytest.raises(ServeError) as failed:
        fleet.start()
    message = str(failed.value)
    assert OOM in message and "exited with code 1 before it answered" in message and ".log" in message
    assert "See root cause above" not in message
    assert time.monotonic() - started < 20
    assert fake.left() == []


def test_a_server_that_never_answers_is_given_up_at_the_timeout(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    fake = fake_vllm(monkeypatch, tmp_path, FAKE_VLLM_DELAY="600")
    fleet = Fleet(_plan(replicas=((),), start_timeout=3), tmp_path, progress=False)
    with pytest.raises(ServeError, match=r"did not answer within [34]s"):
        fleet.start()
    assert fake.left() == []


def test_a_restart_that_never_answers_counts_as_a_death(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = fake_vllm(monkeypatch, tmp_path)
    lost: list[ServerLostError] = []
    with Fleet(_plan(replicas=((),), start_timeout=3, max_restarts=1), tmp_path, progress=False,
               on_lost=lost.append) as fleet:
        [url] = fleet.start()
        monkeypatch.setenv("FAKE_VLLM_DELAY", "600")  # the next start hangs while loading
        _kill_server(fleet, "vllm-0")
        wait_until(lambda: fleet.states.state(url) == GONE, 20, "given up")
        assert "did not answer within" in str(lost[0])
    assert len(fake.starts()) == 2 and fake.left() == []


def test_stop_during_a_restart_leaves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = fake_vllm(monkeypatch, tmp_path)
    fleet = Fleet(_plan(replicas=((),)), tmp_path, progress=False)
    [url] = fleet.start()
    monkeypatch.setenv("FAKE_VLLM_DELAY", "600")
    _kill_server(fleet, "vllm-0")
    wait_until(lambda: len(fake.starts()) == 2, 10, "restart begun")
    fleet.stop()
    assert fleet.states.state(url) == RESTARTING
    wait_until(lambda: not fake.left(), 10, "nothing left")


def test_servers_found_free_or_counted_up_from_a_port(tmp_path: Path) -> None:
    plan = _plan(replicas=((), (), ()), port=18000)
    assert Fleet(plan, tmp_path)._ports() == [18000, 18001, 18002]
    assert len(set(Fleet(_plan(replicas=((), (), ())), tmp_path)._ports())) == 3
