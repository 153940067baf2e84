"""The teacher's servers of one plan: started together (with a progress line), watched, each restarted alone
when it dies, stopped together.

A server that dies is marked RESTARTING in `states` at once (the teacher then routes new turns to the other
servers, or waits), started again on its port once nothing of the old one is left, and marked UP when it
answers. Its `max_restarts`-th death after the first is one too many: it is marked GONE, and `on_lost` is
told why (the run stops for it).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hfdistill.core.errors import Interrupted, ServeError, ServerLostError
from hfdistill.core.retry import RetryPolicy
from hfdistill.edge import Edge
from hfdistill.teacher.lifecycle import GONE, RESTARTING, UP, ServerStates
from hfdistill.teacher.serve.plan import ServePlan
from hfdistill.teacher.serve.progress import StartProgress
from hfdistill.teacher.serve.server import ServerProcess, exit_words, wait_ready

__all__ = ["Fleet"]

log = logging.getLogger(__name__)
_WILDCARD = ("0.0.0.0", "::", "")


class Fleet:
    """`start()` the plan's servers (their /v1 URLs), watch them, `stop()` them; a context manager too."""

    def __init__(self, plan: ServePlan, log_dir: Path, *, states: ServerStates | None = None, progress: bool = True,
                 names: Sequence[str] | None = None, url_host: str | None = None,
                 on_lost: Callable[[ServerLostError], None] | None = None,
                 cancelled: Callable[[], bool] = lambda: False) -> None:
        """`on_lost`: told when a server is given up (from a thread of ours); `cancelled`: asked while the servers
        start (a Ctrl-C then ends the wait at once, not minutes later)."""
        self.plan = plan
        self.log_dir = Path(log_dir)
        self.states = states if states is not None else ServerStates()
        self.progress = progress
        self.names = list(names) if names is not None else [f"vllm-{i}" for i in range(len(plan.replicas))]
        self.url_host = url_host or ("127.0.0.1" if plan.host in _WILDCARD else plan.host)
        self.on_lost = on_lost
        self.cancelled = cancelled
        self.servers: list[ServerProcess] = []
        self.restarts: dict[str, int] = dict.fromkeys(self.names, 0)  # restarts made (or begun), by server
        self.ready_seconds: dict[str, float] = {}  # how long each server's first start took to answer
        self.failure: ServerLostError | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._serving = False  # every server answered once: from then on a death is restarted

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(s.url for s in self.servers)

    def start(self) -> tuple[str, ...]:
        """Start every server and wait until each answers; any failure stops them all (ServeError, exit 2)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ports = self._ports()
        self.servers = [self._server(name, port, gpus)
                        for name, port, gpus in zip(self.names, ports, self.plan.replicas, strict=True)]
        try:
            for server in self.servers:
                server.start()
            asyncio.run(self._first_start())
        except BaseException:
            self.stop()
            raise
        for server in self.servers:
            self.states.set(server.url, UP)
        with self._lock:
            self._serving = True
        return self.urls

    def stop(self) -> None:
        """Stop every server at once and wait until none of them is left (idempotent)."""
        with self._lock:
            self._stopping = True
            servers = list(self.servers)
        for server in servers:
            server.request_stop()
        for server in servers:
            server.wait_stopped()

    # ------------------------------------------------------------ starting

    def _ports(self) -> list[int]:
        if self.plan.port:
            return [self.plan.port + i for i in range(len(self.plan.replicas))]
        return [_free_port(self.plan.host) for _ in self.plan.replicas]

    def _server(self, name: str, port: int, gpus: tuple[str, ...]) -> ServerProcess:
        return ServerProcess(name, self.plan.command(port), self.plan.environment(gpus),
                             f"http://{_url_host(self.url_host)}:{port}/v1", self.log_dir / f"{name}.log",
                             grace=self.plan.stop_grace, on_exit=self._died, on_stopped=self._restart)

    async def _first_start(self) -> None:
        edge = Edge(RetryPolicy())
        deadline = time.monotonic() + self.plan.start_timeout
        try:
            async with StartProgress(self.servers, enabled=self.progress) as progress:
                waits = [asyncio.ensure_future(self._answers(s, edge, deadline, progress)) for s in self.servers]
                try:
                    for done in asyncio.as_completed(waits):
                        await done  # the first failure raises at once: the others are not waited for
                finally:
                    for wait in waits:
                        wait.cancel()
        finally:
            await edge.aclose()
        log.info("vLLM ready: %d server(s) in %.1fs (%s); logs in %s", len(self.servers),
                 max(self.ready_seconds.values()), ", ".join(self.urls), self.log_dir)

    async def _answers(self, server: ServerProcess, edge: Edge, deadline: float, progress: StartProgress) -> None:
        if not await wait_ready(server, edge, deadline, lambda: self._stopping or self.cancelled()):
            if self.cancelled():
                raise Interrupted("interrupted while the teacher's servers were starting; nothing was generated; "
                                  "rerun the same command to start again")
            code = server.exit_code
            raise ServeError(server.failure(f"{exit_words(code)} before it answered" if code is not None else
                                            "was stopped before it answered", starting=True))
        self.ready_seconds[server.name] = time.monotonic() - server.started_at
        progress.ready(server)

    # ------------------------------------------------------------ deaths and restarts (from reader threads)

    def _died(self, server: ServerProcess) -> None:
        """The server ended by itself: route around it now; it is restarted once nothing of it is left."""
        self._count_death(server, server.failure(exit_words(server.exit_code if server.exit_code is not None else -1)))

    def _count_death(self, server: ServerProcess, why: str) -> bool:
        """Mark the server RESTARTING (True), or GONE when it may not be restarted again (False)."""
        with self._lock:
            if self._stopping or not self._serving or server not in self.servers:
                return False  # (a death during the first start fails the start instead)
            lost = self.restarts[server.name] >= self.plan.max_restarts
            if not lost:
                self.restarts[server.name] += 1
            n = self.restarts[server.name]
        if lost:
            self._give_up(server, why, n)
            return False
        self.states.set(server.url, RESTARTING, why)
        log.warning("teacher server %s; restarting it (restart %d of %d at most); its rollouts wait for it or go on "
                    "on the other servers", why, n, self.plan.max_restarts)
        return True

    def _give_up(self, server: ServerProcess, why: str, restarts: int) -> None:
        failure = ServerLostError(f"teacher server {why}, after {restarts} restart(s) (--serve-max-restarts "
                                  f"{self.plan.max_restarts}); the run stopped")
        self.failure = failure
        self.states.set(server.url, GONE, str(failure))
        log.error("%s", failure)
        if self.on_lost is not None:
            self.on_lost(failure)

    def _restart(self, old: ServerProcess) -> None:
        """Once nothing of the dead server is left (its port is free), start it again and wait for it; called
        from the dead server's reader thread."""
        while self.states.state(old.url) == RESTARTING:
            with self._lock:
                if self._stopping:
                    return
                new = self._server(old.name, _port_of(old.url), self.plan.replicas[self.names.index(old.name)])
                self.servers[self.servers.index(old)] = new
            try:
                new.start()
                ready = asyncio.run(self._answers_again(new))
            except ServeError as e:  # it never answered: one more death
                new.stop()
                if not self._count_death(new, str(e)):
                    return
                old = new
                continue
            if ready:
                self.states.set(new.url, UP)
                log.info("teacher server %s restarted in %.0fs; its rollouts go on", new.name,
                         time.monotonic() - new.started_at)
            return  # (not ready: it ended again, and its own reports carry on from _died)

    async def _answers_again(self, server: ServerProcess) -> bool:
        edge = Edge(RetryPolicy())
        try:
            return await wait_ready(server, edge, time.monotonic() + self.plan.start_timeout, lambda: self._stopping)
        finally:
            await edge.aclose()


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host if host not in _WILDCARD else "", 0))
        return int(s.getsockname()[1])


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
