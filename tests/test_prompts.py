"""Prompts: the run's texts for its tools; the error observation, the tools in every context, golden answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hfdistill.core.prompts import Prompts
from hfdistill.core.templates import Templates
from hfdistill.core.tools import SearchTool


@dataclass(frozen=True)
class VisitTool:
    """A tool without a `query_arg` (only what `Prompts` reads of a tool)."""

    name: str = "visit"
    observation_template: str = "tool_observation.j2"

    def schema(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "parameters": {"type": "object"}}}


def test_a_wrong_call_is_answered_with_how_the_first_tool_is_called() -> None:
    prompts = Prompts.build(Templates(), [SearchTool(query_arg="query"), VisitTool()])
    assert prompts.error("unknown tool 'browse'") == (
        "Error: unknown tool 'browse'. Call the tool as "
        '<tool_call>{"name": "search", "arguments": {"query": ["your query"]}}</tool_call>')


def test_a_first_tool_without_a_query_argument_is_named_without_an_example() -> None:
    prompts = Prompts.build(Templates(), [VisitTool(), SearchTool()])
    assert prompts.error("bad call") == "Error: bad call. Call visit with arguments that match its parameters."


@pytest.mark.parametrize(("named", "hint"), [
    pytest.param("visit", "Call visit with arguments that match its parameters.", id="the-tool-it-called"),
    pytest.param("search", '<tool_call>{"name": "search", "arguments": {"query_list": ["your query"]}}</tool_call>',
                 id="search-with-its-example"),
    pytest.param("browse", '<tool_call>{"name": "search", "arguments": {"query_list": ["your query"]}}</tool_call>',
                 id="an-unknown-tool-gets-the-first-tools-way"),
])
def test_a_wrong_call_is_answered_with_how_the_tool_it_named_is_called(named: str, hint: str) -> None:
    prompts = Prompts.build(Templates(), [SearchTool(), VisitTool()])
    assert prompts.error("bad call", named).endswith(hint)


def test_tools_of_one_shape_are_the_rows_tools_column() -> None:
    prompts = Prompts.build(Templates(), [SearchTool()])
    assert prompts.row_tools == prompts.tools == [SearchTool().schema()]
    assert prompts.system == prompts.plain_system
    assert prompts.system_on_wire(text_protocol=True) == f"{prompts.system}\n\n{prompts.tools_section}"


def test_tools_of_different_shapes_are_stored_in_the_system_message() -> None:
    # Parquet would pad each schema with the other's keys (as nulls): the rows show the tools as the chat
    # template would, in the system message, and their `tools` column is empty.
    prompts = Prompts.build(Templates(), [SearchTool(), VisitTool()])
    assert prompts.tools == [SearchTool().schema(), VisitTool().schema()]
    assert prompts.row_tools == []
    assert prompts.system == f"{prompts.plain_system}\n\n{prompts.tools_section}"
    assert '"name": "visit"' in prompts.system
    assert prompts.system_on_wire(text_protocol=False) == prompts.plain_system  # tools= carries them
    assert prompts.system_on_wire(text_protocol=True) == prompts.system


def test_tools_are_kept_by_name_in_the_order_given() -> None:
    search, visit = SearchTool(), VisitTool()
    prompts = Prompts.build(Templates(), [visit, search])
    assert list(prompts.toolset.items()) == [("visit", visit), ("search", search)]
    assert prompts.tools == [visit.schema(), search.schema()]


def test_every_rendering_sees_the_runs_tools(tmp_path: Path) -> None:
    (tmp_path / "user_prompt.j2").write_text("{{ question }} "
                                             "({{ tools | map(attribute='function.name') | join(', ') }})")
    prompts = Prompts.build(Templates(tmp_path), [SearchTool(), VisitTool()])
    assert prompts.user("Why?", ["because"]) == "Why? (search, visit)"


def test_the_built_in_templates_do_not_show_the_golden_answers() -> None:
    prompts = Prompts.build(Templates(), [SearchTool()])
    assert not prompts.uses_golden_answers
    assert prompts.user("Capital of France?", ["Paris"]) == "Question: Capital of France?"


def test_a_user_template_that_shows_the_golden_answers_is_noticed(tmp_path: Path) -> None:
    (tmp_path / "user_prompt.j2").write_text("{{ question }} (hint: {{ golden_answers | join(' or ') }})")
    prompts = Prompts.build(Templates(tmp_path), [SearchTool()])
    assert prompts.uses_golden_answers
    assert prompts.user("Capital?", ("Paris", "paris")) == "Capital? (hint: Paris or paris)"


def test_a_mention_in_a_template_comment_is_not_a_use(tmp_path: Path) -> None:
    (tmp_path / "user_prompt.j2").write_text("{# golden_answers are not shown #}{{ question }}")
    assert not Prompts.build(Templates(tmp_path), [SearchTool()]).uses_golden_answers
