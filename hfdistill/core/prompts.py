"""Every text of a conversation, rendered from the run's templates, for the run's tools."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hfdistill.core.templates import Templates
from hfdistill.core.tools import Tool

__all__ = ["Prompts"]


@dataclass(frozen=True)
class Prompts:
    """Rendered once per run where possible; per row only the user turn and observations vary."""

    templates: Templates
    toolset: Mapping[str, Tool]  # by name, in the order the model is shown them
    tools: list[dict[str, Any]]  # their schemas: the `tools` column of every row
    system: str  # stored with every conversation (tools live in the `tools` column)
    tools_section: str  # appended to the system prompt on the wire in the text protocol
    force_answer: str  # the user turn asking for the final answer at the context limit

    @classmethod
    def build(cls, templates: Templates, tools: Sequence[Tool]) -> Prompts:
        schemas = [tool.schema() for tool in tools]
        templates.check(schemas)
        return cls(templates=templates, toolset={tool.name: tool for tool in tools}, tools=schemas,
                   system=templates.render("system_prompt.j2", tools=schemas),
                   tools_section=templates.render("tools_section.j2", tools=schemas),
                   force_answer=templates.render("force_answer.j2", tools=schemas))

    @property
    def uses_golden_answers(self) -> bool:
        """Whether the golden answers reach the teacher (a user template may show them)."""
        return any("golden_answers" in self.templates.variables(name)
                   for name in ("system_prompt.j2", "user_prompt.j2"))

    def system_on_wire(self, text_protocol: bool) -> str:
        return f"{self.system}\n\n{self.tools_section}" if text_protocol else self.system

    def user(self, question: str, golden_answers: Sequence[str]) -> str:
        return self.render("user_prompt.j2", question=question, golden_answers=list(golden_answers))

    def render(self, name: str, **variables: Any) -> str:
        """A template with the run's tool schemas in its context (as every template gets them)."""
        return self.templates.render(name, tools=self.tools, **variables)

    def error(self, message: str) -> str:
        """The observation for a call the model got wrong, showing how the first tool is called."""
        first = next(iter(self.toolset.values()))
        return self.render("tool_error.j2", error=message, tool_name=first.name,
                           query_arg=getattr(first, "query_arg", "arguments"))
