"""What a run offers the teacher: search, open and the MCP servers' tools, chosen with `--tools`.

Names are stable whatever is chosen: an MCP tool keeps its server's name for it unless another tool
(a built-in one, or one of another server) has that name too; then each such MCP tool is prefixed with
its server's label (`docs_search`). The default offer is search and every MCP tool; `open` is offered
when asked for (it needs the embedded corpus).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hfdistill.core.config import DistillConfig
from hfdistill.core.errors import ConfigError
from hfdistill.core.templates import OBSERVATION_TEMPLATES
from hfdistill.core.tools import SearchTool, Tool
from hfdistill.core.toolspec import BUILTIN_TOOLS
from hfdistill.tools.open import OpenTool

if TYPE_CHECKING:
    from hfdistill.tools.mcp import McpServerTools

__all__ = ["discover_servers", "offered_tools", "require_mcp", "toolset_identity"]

MCP_EXTRA = 'pip install "hfdistill[mcp]"'


def require_mcp() -> None:
    """The MCP SDK (and the JSON Schema validator) are the `mcp` extra; without them, one line says so."""
    try:
        import jsonschema  # noqa: F401
        import mcp  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"--mcp / --mcp-url need the MCP SDK ({e.name} is not installed): {MCP_EXTRA}") from None


def discover_servers(config: DistillConfig) -> list[McpServerTools]:
    """The tools of every MCP server of the run (none without --mcp / --mcp-url)."""
    if not config.tools.mcp:
        return []
    require_mcp()
    from hfdistill.tools.mcp import discover

    return discover(config.tools, config.retry)


def offered_tools(config: DistillConfig, servers: Sequence[McpServerTools] = ()) -> list[Tool]:
    """The tools the teacher is offered, in the order it is shown them (`--tools`, or search and every MCP tool)."""
    candidates: dict[str, Tool] = {
        "search": SearchTool(config.query_arg, observation_template=OBSERVATION_TEMPLATES[config.observation_format])}
    if config.corpus is not None:
        candidates["open"] = OpenTool(config.tools.open_max_chars)
    for tool in _mcp_tools(servers):
        candidates[tool.name] = tool
    chosen = config.tools.offered
    names = list(chosen) if chosen is not None else [n for n in candidates if n != "open"]
    unknown = [n for n in names if n not in candidates]
    if unknown:
        known = ", ".join(candidates) + ("" if "open" in candidates else " (and open, with --corpus)")
        raise ConfigError(f"--tools names {', '.join(map(repr, unknown))}, which no server offers; the tools are: "
                          f"{known}")
    return [candidates[n] for n in names]


def _mcp_tools(servers: Sequence[McpServerTools]) -> list[Tool]:
    if not servers:
        return []
    from hfdistill.tools.mcp import McpTool

    taken = Counter([*BUILTIN_TOOLS, *(t.name for s in servers for t in s.tools)])
    tools: list[Tool] = []
    for server in servers:
        for info in server.tools:
            name = info.name if taken[info.name] == 1 else f"{server.label}_{info.name}"
            tools.append(McpTool(name, server.label, info))
    doubled = [n for n, k in Counter(t.name for t in tools).items() if k > 1 or n in BUILTIN_TOOLS]
    if doubled:  # (a prefixed name that is another tool's own name)
        raise ConfigError(f"MCP tools would share the names {', '.join(doubled)}; leave some out with --tools")
    return tools


def toolset_identity(tools: Sequence[Tool], servers: Sequence[McpServerTools]) -> tuple[dict[str, Any], ...] | None:
    """What names the offered tools in a run's fingerprint and record: each tool's schema, the server that runs
    it (its command or URL, secrets masked) and the open tool's limit. None for search alone, which the
    search options name already (so runs from before other tools keep their fingerprint)."""
    if [t.name for t in tools] == ["search"] and isinstance(tools[0], SearchTool):
        return None
    by_label = {s.label: s for s in servers}
    out = []
    for tool in tools:
        entry: dict[str, Any] = {"name": tool.name, "schema": tool.schema()}
        if isinstance(tool, OpenTool):
            entry["max_chars"] = tool.max_chars
        server = getattr(tool, "server", None)
        if server in by_label:
            entry["server"] = by_label[server].identity()
        out.append(entry)
    return tuple(out)
