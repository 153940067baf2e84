"""The tool options of `generate`: MCP servers (`--mcp`, `--mcp-url`, `--mcp-header`), `--tools` and the
limits of the tools that do I/O."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from hfdistill.cli.parsers import flag
from hfdistill.core.errors import ConfigError
from hfdistill.core.toolspec import DEFAULT_OPEN_MAX_CHARS, McpServerSpec, ToolOptions, parse_header

__all__ = ["add_tool_options", "tools_from_args"]

_DEST = "mcp_servers"  # every --mcp, --mcp-url and --mcp-header, in the order given


class _InOrder(argparse.Action):
    """Keeps --mcp, --mcp-url and --mcp-header in one list, in order: a header belongs to the URL before it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items = list(getattr(namespace, _DEST, None) or [])
        items.append((self.metavar, values))
        setattr(namespace, _DEST, items)


def add_tool_options(g: argparse._ArgumentGroup) -> None:
    for spellings, metavar, text in (
            (("--mcp",), "COMMAND", "an MCP server to start and talk to over stdio, e.g. --mcp \"python server.py\" "
                                    "(repeatable); its tools join the teacher's"),
            (("--mcp-url", "--mcp_url"), "URL", "an MCP server over streamable HTTP, e.g. --mcp-url "
                                                "http://127.0.0.1:8931/mcp (repeatable)"),
            (("--mcp-header", "--mcp_header"), "HEADER", "\"Name: value\" sent to the --mcp-url given before it, "
                                                         "e.g. an API key (repeatable)")):
        g.add_argument(*spellings, dest=_DEST, action=_InOrder, metavar=metavar, help=text)
    flag(g, "tools", metavar="NAMES",
         help="the tools offered, comma-separated, in the order the teacher is shown them: search, open (a document "
              "of --corpus) and MCP tools by name (default: search and every MCP tool)")
    flag(g, "open_max_chars", type=int, default=DEFAULT_OPEN_MAX_CHARS, metavar="N",
         help=f"open: a document longer than this is cut, with a note saying so (default {DEFAULT_OPEN_MAX_CHARS})")
    flag(g, "mcp_timeout", type=float, default=60.0, metavar="SECONDS",
         help="seconds one MCP call may take; past it (or when the server cannot be reached) the call is retried "
              "like any server's, and the failures name the server (default 60)")
    flag(g, "mcp_concurrency", type=int, default=8, metavar="N",
         help="MCP calls in flight per server (default 8)")


def tools_from_args(args: argparse.Namespace) -> ToolOptions:
    offered = tuple(n.strip() for n in args.tools.split(",")) if args.tools is not None else None
    return ToolOptions(mcp=_servers(getattr(args, _DEST, None) or ()), offered=offered,
                       open_max_chars=args.open_max_chars, mcp_timeout=args.mcp_timeout,
                       mcp_concurrency=args.mcp_concurrency)


def _servers(items: Sequence[tuple[str, str]]) -> tuple[McpServerSpec, ...]:
    specs: list[McpServerSpec] = []
    headers: dict[int, list[tuple[str, str]]] = {}
    for kind, value in items:
        if kind == "COMMAND":
            specs.append(McpServerSpec.stdio(value))
        elif kind == "URL":
            specs.append(McpServerSpec(url=value))
        elif not specs or specs[-1].url is None:
            raise ConfigError("--mcp-header goes after the --mcp-url it is sent to")
        else:
            headers.setdefault(len(specs) - 1, []).append(parse_header(value))
    return tuple(McpServerSpec(url=s.url, headers=tuple(headers[i])) if i in headers else s
                 for i, s in enumerate(specs))
