"""The tools a teacher may call, behind one small seam; `search` is defined here, `open` and MCP servers'
tools in `hfdistill.tools`.

A tool is its name, its JSON schema, the argument names it accepts (normalised by `arguments`),
how several calls of it in one turn fold into one, an async call, and the template that renders
its result. The rollout loop, the prompts and the rows work for any list of tools; only the call
does I/O, through the `ToolContext` the run gives it (per event loop): the retriever, the corpus's
documents, the tool servers.

Who is at fault decides what happens: the model's mistake (arguments the tool cannot run with, a
result the tool marks as failed) is an observation the model sees; a server's fault is a
`ServiceError` that fails the rollout (after the retries) and names the server in the failures file.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hfdistill.core.types import Document

__all__ = ["OpenFn", "OpenedDocument", "SearchTool", "ServerResult", "Tool", "ToolArgumentError", "ToolContext",
           "ToolOutput", "ToolServer", "search_queries", "search_tool_schema"]

SearchFn = Callable[[Sequence[str]], Awaitable[list[list[Document]]]]
_QUERY_KEYS = ("query_list", "query", "queries")


class ToolArgumentError(ValueError):
    """The model called a tool with arguments it cannot run with; the message is shown to the model."""


@dataclass(frozen=True)
class ToolOutput:
    """What a call produced: the observation the model sees next, how many queries it sent, and whether the
    tool reported a failure the model caused (an MCP result marked `isError`, a document that is not there)."""

    observation: str
    queries: int = 0
    error: bool = False


@dataclass(frozen=True)
class OpenedDocument:
    """A document of the corpus, read for the `open` tool: its title and text, cut at the caller's limit."""

    title: str
    text: str
    passages: int  # read into `text`
    cut: bool  # the document goes on past `text`


@dataclass(frozen=True)
class ServerResult:
    """What a tool server answered: the text of each content item, its structured content, and whether the
    tool failed (the model sees that as its observation)."""

    texts: tuple[str, ...]
    structured: Any = None
    is_error: bool = False


class ToolServer(Protocol):
    """A server that runs tools (an MCP server's session in one event loop)."""

    async def call(self, tool: str, arguments: dict[str, Any]) -> ServerResult: ...


# (id or title, max characters) -> the document, or None when the corpus has none of that id or title
OpenFn = Callable[[str, int], Awaitable["OpenedDocument | None"]]


@dataclass(frozen=True)
class ToolContext:
    """The run's world as tools see it (one per event loop): the retriever (bound to `topk`), the template
    renderer, the corpus's documents (an embedded retriever's; None without one) and the tool servers by name."""

    search: SearchFn
    render: Callable[..., str]  # (template name, **variables) -> text
    open: OpenFn | None = None
    servers: Mapping[str, ToolServer] = field(default_factory=dict)


class Tool(Protocol):
    """One tool of the conversation."""

    name: str
    observation_template: str

    def schema(self) -> dict[str, Any]: ...

    def arguments(self, raw: Mapping[str, Any]) -> dict[str, Any]: ...

    def fold(self, calls: Sequence[dict[str, Any]]) -> dict[str, Any]: ...

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput: ...


def search_tool_schema(query_arg: str = "query_list") -> dict[str, Any]:
    """verl's search tool schema; identical on every output row, no optional keys, so no nulls."""
    return {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Searches the web for relevant information based on the given query.",
            "parameters": {
                "type": "object",
                "properties": {
                    query_arg: {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "A list of fully-formed semantic queries. The tool will return "
                                       "search results for each query.",
                    }
                },
                "required": [query_arg],
            },
        },
    }


def search_queries(args: Mapping[str, Any]) -> list[str]:
    """Queries from `query_list`, `query` or `queries`, each a string or a list of strings."""
    for key in _QUERY_KEYS:
        if key in args:
            value = args[key]
            items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
            return [q.strip() for q in items if isinstance(q, str) and q.strip()]
    return []


@dataclass(frozen=True)
class SearchTool:
    """The search tool: verl's `query_list` (or Tongyi's `query`), one list of documents per query."""

    query_arg: str = "query_list"
    observation_template: str = "tool_observation.j2"
    name: str = "search"
    accepts: tuple[str, ...] = _QUERY_KEYS  # what models write: verl's, Tongyi's (a list or a string)

    def schema(self) -> dict[str, Any]:
        return search_tool_schema(self.query_arg)

    def arguments(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        queries = search_queries(raw)
        if not queries:
            raise ToolArgumentError(f"{self.name} needs a non-empty \"{self.query_arg}\" of strings, got "
                                    f"{json.dumps(raw, ensure_ascii=False)}")
        return {self.query_arg: queries}

    def fold(self, calls: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """One call with every query of the turn's calls (each once, in order)."""
        return {self.query_arg: list(dict.fromkeys(q for call in calls for q in call[self.query_arg]))}

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        queries = arguments[self.query_arg]
        documents = await context.search(queries)
        # Documents go in as they are: templates read attributes (d.title), no per-call dict copies.
        results = [{"query": q, "documents": docs} for q, docs in zip(queries, documents, strict=True)]
        return ToolOutput(context.render(self.observation_template, results=results), queries=len(queries))
