"""The progress line while vLLM starts (a 30B model loads for minutes): in a terminal a live line with the
servers ready, the time, and what the slowest one's log says it is doing; otherwise a log line every 30 s."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from hfdistill.teacher.serve.server import ServerProcess

__all__ = ["StartProgress"]

log = logging.getLogger(__name__)
_LOG_EVERY = 30.0  # seconds between lines when stderr is not a terminal
_DOING = 70  # characters of a log line shown in the live line


class StartProgress:
    """`async with StartProgress(servers, enabled=...) as p:` ... `p.ready(server)` as each answers."""

    def __init__(self, servers: Sequence[ServerProcess], *, enabled: bool) -> None:
        self.servers = list(servers)
        self.enabled = enabled
        self.waiting = list(servers)
        self.started = time.monotonic()
        self._bar: Any = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StartProgress:
        if self.enabled and sys.stderr.isatty():
            self._bar = tqdm(total=len(self.servers), desc="starting vLLM", unit="server", file=sys.stderr,
                             bar_format="{desc}: {n}/{total} ready [{elapsed}]{postfix}", dynamic_ncols=True)
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._bar is not None:
            self._bar.close()

    def ready(self, server: ServerProcess) -> None:
        if server in self.waiting:
            self.waiting.remove(server)
        if self._bar is not None:
            self._bar.update(1)

    async def _tick(self) -> None:
        last_line = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            slowest = self.waiting[0] if self.waiting else None
            doing = f"{slowest.name}: {slowest.doing()}" if slowest is not None else ""
            if self._bar is not None:
                self._bar.set_postfix_str(doing[:_DOING], refresh=True)
            elif time.monotonic() - last_line >= _LOG_EVERY:
                last_line = time.monotonic()
                log.info("starting vLLM: %d of %d server(s) ready after %.0fs; %s", len(self.servers) -
                         len(self.waiting), len(self.servers), time.monotonic() - self.started, doing[:200])
