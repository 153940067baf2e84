"""Every text of a conversation, rendered from the run's templates, for the run's tools.

The rows' `tools` column holds the schemas offered when parquet can hold them as they are: one struct
type serves the whole column, so schemas of different shapes (search's `query_list` beside an MCP tool's
nested arguments) would come back padded with null keys, and verl would render those nulls into the
student's prompt. Such a tool set is stored the way the chat template would have shown it instead: the
tools section (`tools_section.j2`, Qwen3's own "# Tools" text) at the end of the stored system message,
and `tools` empty on every row. The teacher is shown the same text either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hfdistill.core.rows import tools_fit_a_column
from hfdistill.core.templates import Templates
from hfdistill.core.tools import Tool

__all__ = ["Prompts"]


@dataclass(frozen=True)
class Prompts:
    """Rendered once per run where possible; per row only the user turn and observations vary."""

    templates: Templates
    toolset: Mapping[str, Tool]  # by name, in the order the model is shown them
    tools: list[dict[str, Any]]  # their schemas: what the teacher is offered
    row_tools: list[dict[str, Any]]  # the `tools` column of every row: the schemas, or [] (see the module)
    system: str  # stored with every conversation (with the tools section when `row_tools` is empty)
    plain_system: str  # the system prompt alone
    tools_section: str  # appended to the system prompt on the wire in the text protocol
    force_answer: str  # the user turn asking for the final answer at the context limit

    @classmethod
    def build(cls, templates: Templates, tools: Sequence[Tool]) -> Prompts:
        schemas = [tool.schema() for tool in tools]
        templates.check(schemas)
        plain = templates.render("system_prompt.j2", tools=schemas)
        section = templates.render("tools_section.j2", tools=schemas)
        fits = tools_fit_a_column(schemas)
        return cls(templates=templates, toolset={tool.name: tool for tool in tools}, tools=schemas,
                   row_tools=schemas if fits else [], system=plain if fits else f"{plain}\n\n{section}",
                   plain_system=plain, tools_section=section,
                   force_answer=templates.render("force_answer.j2", tools=schemas))

    @property
    def uses_golden_answers(self) -> bool:
        """Whether the golden answers reach the teacher (a user template may show them)."""
        return any("golden_answers" in self.templates.variables(name)
                   for name in ("system_prompt.j2", "user_prompt.j2"))

    def system_on_wire(self, text_protocol: bool) -> str:
        return f"{self.plain_system}\n\n{self.tools_section}" if text_protocol else self.plain_system

    def user(self, question: str, golden_answers: Sequence[str]) -> str:
        return self.render("user_prompt.j2", question=question, golden_answers=list(golden_answers))

    def render(self, name: str, **variables: Any) -> str:
        """A template with the run's tool schemas in its context (as every template gets them)."""
        return self.templates.render(name, tools=self.tools, **variables)

    def error(self, message: str, tool_name: str = "") -> str:
        """The observation for a call the model got wrong: how the tool it named is called (the first tool's
        way when it named none that is offered)."""
        tool = self.toolset.get(tool_name) or next(iter(self.toolset.values()))
        return self.render("tool_error.j2", error=message, tool_name=tool.name,
                           query_arg=getattr(tool, "query_arg", None))
