"""The search tool's schema and every text of a conversation, rendered from the run's templates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hfdistill.templates import Templates
from hfdistill.types import Document

__all__ = ["TOOL_NAME", "Prompts", "search_tool_schema"]

TOOL_NAME = "search"


def search_tool_schema(query_arg: str = "query_list") -> dict[str, Any]:
    """verl's search tool schema; identical on every output row, no optional keys, so no nulls."""
    return {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
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


@dataclass(frozen=True)
class Prompts:
    """Rendered once per run where possible; per row only the user turn and observations vary."""

    templates: Templates
    tools: list[dict[str, Any]]
    query_arg: str
    system: str  # stored with every conversation (tools live in the `tools` column)
    tools_section: str  # appended to the system prompt on the wire in the text protocol

    @classmethod
    def build(cls, templates: Templates, query_arg: str) -> Prompts:
        tools = [search_tool_schema(query_arg)]
        templates.check(tools)
        return cls(templates=templates, tools=tools, query_arg=query_arg,
                   system=templates.render("system_prompt.j2", tools=tools),
                   tools_section=templates.render("tools_section.j2", tools=tools))

    @property
    def uses_golden_answers(self) -> bool:
        """Whether the golden answers reach the teacher (a user template may show them)."""
        return any("golden_answers" in self.templates.variables(name)
                   for name in ("system_prompt.j2", "user_prompt.j2"))

    def system_on_wire(self, text_protocol: bool) -> str:
        return f"{self.system}\n\n{self.tools_section}" if text_protocol else self.system

    def user(self, question: str, golden_answers: Sequence[str]) -> str:
        return self.templates.render("user_prompt.j2", question=question, golden_answers=list(golden_answers),
                                     tools=self.tools)

    def observation(self, queries: Sequence[str], documents: Sequence[Sequence[Document]]) -> str:
        # Documents go in as they are: templates read attributes (d.title), no per-call dict copies.
        results = [{"query": q, "documents": docs} for q, docs in zip(queries, documents, strict=True)]
        return self.templates.render(self.templates.observation, results=results, tools=self.tools)

    def error(self, message: str) -> str:
        return self.templates.render("tool_error.j2", error=message, tool_name=TOOL_NAME,
                                     query_arg=self.query_arg, tools=self.tools)
