"""MCP servers' tools behind the tool seam: discovered once per run, called through each loop's sessions.

`discover` connects to every server (stdio or streamable HTTP), lists its tools and closes again; the
tools' input schemas become the teacher's tool schemas as verl's `mcp2openai` makes them (`{"type":
"function", "function": {name, description, parameters}}`), with null values dropped so that a stored
schema never holds a null of its own. An `McpTool` checks the model's arguments against that schema
(the model's mistake is its observation, as a bad search is) and calls its server through the
`ToolServer` the run's `ToolContext` holds for it (`mcp_session.McpSession`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jsonschema

from hfdistill.core.errors import ConfigError
from hfdistill.core.retry import RetryPolicy
from hfdistill.core.tools import ToolArgumentError, ToolContext, ToolOutput
from hfdistill.core.toolspec import McpServerSpec, ToolOptions
from hfdistill.tools.mcp_session import McpSession

__all__ = ["McpServerTools", "McpTool", "McpToolInfo", "discover", "open_sessions"]

T = TypeVar("T")


@dataclass(frozen=True)
class McpToolInfo:
    """One tool as its server lists it: its name there, its description, its input schema (nulls dropped)."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class McpServerTools:
    """A server and what it offers: `label` is how hfdistill names it (from what it calls itself)."""

    spec: McpServerSpec
    label: str
    tools: tuple[McpToolInfo, ...]

    def identity(self) -> dict[str, Any]:
        return {"name": self.label, "transport": self.spec.transport, **self.spec.identity()}


@dataclass(frozen=True)
class McpTool:
    """One MCP tool offered to the teacher under `name` (its server's name for it, prefixed with the
    server's label only when another tool has that name)."""

    name: str
    server: str  # the label of the server that runs it
    info: McpToolInfo
    observation_template: str = "mcp_observation.j2"
    _validator: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        try:
            kind = jsonschema.validators.validator_for(self.info.parameters)
            kind.check_schema(self.info.parameters)
        except jsonschema.SchemaError as e:
            raise ConfigError(f"the tool {self.info.name!r} of MCP server {self.server!r} has an input schema that is "
                              f"not JSON Schema ({e.message}); leave it out with --tools") from None
        object.__setattr__(self, "_validator", kind(self.info.parameters))

    def schema(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.info.description,
                                                 "parameters": self.info.parameters}}

    def arguments(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments as given, when they satisfy the tool's input schema (else the model is told why)."""
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(dict(raw)))
        if error is not None:
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
            at = f" (at {where})" if where else ""
            raise ToolArgumentError(f"{self.name} cannot run with {json.dumps(raw, ensure_ascii=False)[:300]}: "
                                    f"{error.message}{at}")
        return dict(raw)

    def fold(self, calls: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Several calls in one turn cannot be merged: the first is run (as the model's authors run the first)."""
        return calls[0]

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        result = await context.servers[self.server].call(self.info.name, arguments)
        observation = context.render(self.observation_template, tool=self.name, server=self.server,
                                     texts=list(result.texts), structured=result.structured, is_error=result.is_error)
        return ToolOutput(observation, error=result.is_error)


def discover(options: ToolOptions, policy: RetryPolicy) -> list[McpServerTools]:
    """Connect to every server of `options`, list its tools, close again; a server that cannot be reached (after
    a few tries) fails here, before any rollout, naming its command or URL."""
    return _blocking(lambda: _discover(options, policy))


async def _discover(options: ToolOptions, policy: RetryPolicy) -> list[McpServerTools]:
    sessions = [McpSession(spec, _provisional_label(spec), policy=policy, timeout=options.mcp_timeout,
                           concurrency=1) for spec in options.mcp]
    try:
        listed = await asyncio.gather(*(s.list_tools() for s in sessions))
    finally:
        await asyncio.gather(*(s.aclose() for s in sessions))
    labels = _labels([s.server_name or s.label for s in sessions])
    return [McpServerTools(s.spec, label, tuple(_info(t) for t in tools))
            for s, label, tools in zip(sessions, labels, listed, strict=True)]


def open_sessions(servers: Sequence[McpServerTools], options: ToolOptions,
                  policy: RetryPolicy) -> dict[str, McpSession]:
    """A session per server for the running event loop (each opens on its first call)."""
    return {s.label: McpSession(s.spec, s.label, policy=policy, timeout=options.mcp_timeout,
                                concurrency=options.mcp_concurrency) for s in servers}


def _info(tool: Any) -> McpToolInfo:
    schema = _without_nulls(tool.input_schema or {"type": "object", "properties": {}})
    return McpToolInfo(tool.name, " ".join((tool.description or "").split()) or tool.name, schema)


def _without_nulls(value: Any) -> Any:
    """A JSON value without the null members of its objects (a stored schema's nulls would be ambiguous)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _provisional_label(spec: McpServerSpec) -> str:
    """A server's name until it says its own: its command's script (or program), or its host and port."""
    if spec.command:
        scripts = [w for w in spec.command[1:] if re.search(r"\.(py|js|mjs|ts)$", w)]
        word = (scripts or [spec.command[-1] if len(spec.command) > 1 else spec.command[0]])[-1]
        return _slug(re.sub(r"\.\w+$", "", word.rsplit("/", 1)[-1]))
    from urllib.parse import urlsplit

    parts = urlsplit(str(spec.url))
    return _slug(f"{parts.hostname}_{parts.port}" if parts.port else str(parts.hostname))


def _labels(names: Sequence[str]) -> list[str]:
    """Distinct labels: each name as a slug, a repeated one numbered (`search`, `search_2`)."""
    out: list[str] = []
    for name in names:
        base = _slug(name) or "mcp"
        label, n = base, 1
        while label in out:
            n += 1
            label = f"{base}_{n}"
        out.append(label)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _blocking(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code, also when the caller is inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]
