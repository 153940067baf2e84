"""The tool seam: any list of tools works through parsing, the rollout loop, prompts and rows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hfdistill.core.prompts import Prompts
from hfdistill.core.records import RolloutResult
from hfdistill.core.rollout import RolloutSpec, rollout
from hfdistill.core.templates import Templates
from hfdistill.core.tools import SearchTool, ToolArgumentError, ToolContext, ToolOutput
from hfdistill.core.types import Document, TeacherReply, ToolCall, Usage


@dataclass(frozen=True)
class OpenTool:
    """A second tool, as Tongyi's `visit` would be: open a passage by id (a test fixture)."""

    name: str = "open"
    observation_template: str = "open_observation.j2"

    def schema(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": "Open a passage by id.",
                                                 "parameters": {"type": "object", "properties": {
                                                     "id": {"type": "string"}}, "required": ["id"]}}}

    def arguments(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(raw.get("id"), str):
            raise ToolArgumentError('open needs an "id" string')
        return {"id": raw["id"]}

    def fold(self, calls: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return calls[0]

    async def __call__(self, arguments: dict[str, Any], context: ToolContext) -> ToolOutput:
        return ToolOutput(context.render(self.observation_template, id=arguments["id"]))


def _reply(content: str = "", calls: tuple[ToolCall, ...] = ()) -> TeacherReply:
    return TeacherReply(content, None, calls, "tool_calls" if calls else "stop", Usage(10, 5))


def test_a_second_tool_runs_through_the_loop_and_the_rows(tmp_path: Path) -> None:
    (tmp_path / "open_observation.j2").write_text("Passage {{ id }} of {{ tools | length }} tools' world.")
    prompts = Prompts.build(Templates(tmp_path), [SearchTool(), OpenTool()])
    assert [t["function"]["name"] for t in prompts.tools] == ["search", "open"]
    assert '"name": "open"' in prompts.tools_section  # the text protocol shows the model both tools
    replies = iter([_reply(calls=(ToolCall("c1", "open", '{"id": "doc-7"}'),)),
                    _reply('<tool_call>{"name": "visit", "arguments": {}}</tool_call>'),
                    _reply("<answer>Paris</answer>")])
    seen: list[list[dict[str, Any]]] = []

    async def chat(messages: list[dict[str, Any]]) -> TeacherReply:
        seen.append(list(messages))
        return next(replies)

    async def search(queries: Sequence[str]) -> list[list[Document]]:
        raise AssertionError("the search tool is not called")

    traj = asyncio.run(rollout("Q?", ["Paris"], chat=chat, tools=ToolContext(search, prompts.render),
                               spec=RolloutSpec(prompts, max_turns=4, text_protocol=False)))
    result = RolloutResult.of(traj)
    assert result.stop_reason == "answer" and result.num_tool_calls == 1 and result.num_tool_errors == 1
    call, observation = result.messages[2], result.messages[3]
    assert call["tool_calls"][0]["function"] == {"name": "open", "arguments": json.dumps({"id": "doc-7"})}
    assert observation == {"role": "tool", "content": "Passage doc-7 of 2 tools' world.", "reasoning_content": None,
                           "tool_calls": None, "tool_call_id": "c1", "name": "open"}
    error = result.messages[5]["content"]
    assert "unknown tool 'visit'; the tools are 'search', 'open'" in error
    assert seen[1][-1]["content"] == "Passage doc-7 of 2 tools' world."


@pytest.mark.parametrize(("raw", "queries"), [
    ({"query_list": ["a", " b "]}, ["a", "b"]),
    ({"query": "a"}, ["a"]),  # Tongyi's string form
    ({"queries": ["a", ""]}, ["a"]),
])
def test_search_accepts_what_models_write(raw: dict[str, Any], queries: list[str]) -> None:
    assert SearchTool("query").arguments(raw) == {"query": queries}


def test_search_refuses_a_call_without_queries_and_folds_a_turns_calls() -> None:
    with pytest.raises(ToolArgumentError, match='non-empty "query_list"'):
        SearchTool().arguments({"topic": "France"})
    folded = SearchTool().fold([{"query_list": ["a", "b"]}, {"query_list": ["b", "c"]}])
    assert folded == {"query_list": ["a", "b", "c"]}
