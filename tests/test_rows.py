"""Row shaping: one fixed schema, scores from golden answers, extra_info kept as is, quality flags."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest

from hfdistill.core.records import RolloutResult
from hfdistill.core.rows import build_table, extra_info_of, output_schema, tools_fit_a_column
from hfdistill.core.tools import search_tool_schema
from hfdistill.core.types import Usage
from hfdistill.curation.rows import curated_row

TOOLS = [search_tool_schema()]
RESULT = RolloutResult([{"role": "system", "content": "s", "reasoning_content": None, "tool_calls": None,
                         "tool_call_id": None, "name": None}], "answer", assistant_turns=1, num_tool_calls=0,
                       num_tool_errors=0, num_queries=0, num_malformed_calls=0, usage=Usage(3, 4),
                       prediction="The Paris")


def _row(result: RolloutResult = RESULT, golden: tuple[str, ...] = ("Paris",), extra: object = None) -> dict:
    return curated_row(result, question="Q?", golden_answers=golden, tools=TOOLS, extra_info=extra, input_index=7,
                     rollout_index=2)


def test_a_row_has_exactly_the_schema_columns() -> None:
    schema = output_schema(TOOLS, pa.struct([("split", pa.string())]))
    row = _row(extra={"split": "train"})
    assert list(row) == schema.names
    assert build_table([row], schema).num_rows == 1


@pytest.mark.parametrize(("golden", "em"), [(("Paris",), True), (("Lyon",), False), ((), None)])
def test_scores_come_from_the_golden_answers(golden: tuple[str, ...], em: bool | None) -> None:
    assert _row(golden=golden)["exact_match"] is em


def test_a_non_json_call_flags_the_row() -> None:
    assert _row()["quality_flags"] == []
    assert _row(dataclasses.replace(RESULT, num_malformed_calls=1))["quality_flags"] == ["tool_error", "malformed_call"]


@pytest.mark.parametrize(("row", "expected"), [
    ({"extra_info": {"a": 1}}, {"a": 1}),
    ({"extra_info": None}, None),  # null stays null: its type comes from the column
    ({"question": "Q?"}, {"index": 3}),  # no such column: the input index
])
def test_extra_info_is_the_inputs_own(row: dict, expected: object) -> None:
    assert extra_info_of(row, 3) == expected


VISIT = {"type": "function", "function": {"name": "visit", "description": "Opens a page.",
                                          "parameters": {"type": "object", "properties": {"url": {"type": "string"}},
                                                         "required": ["url"]}}}


@pytest.mark.parametrize(("schemas", "fits"), [
    pytest.param([search_tool_schema()], True, id="search-alone"),
    pytest.param([search_tool_schema(), search_tool_schema("query")], False, id="other-property-names-pad-nulls"),
    pytest.param([search_tool_schema(), VISIT], False, id="another-shape-pads-nulls"),
    pytest.param([VISIT, {**VISIT, "function": {**VISIT["function"], "name": "fetch"}}], True, id="one-shape"),
    pytest.param([{"a": {"default": 1}}, {"a": {"default": "x"}}], False, id="types-arrow-cannot-unify"),
    pytest.param([{"a": {"minimum": 1}}, {"a": {"minimum": 1.5}}], False, id="an-int-read-back-as-a-float"),
    pytest.param([{"a": 1, "b": 2}, {"b": 3, "a": 4}], False, id="another-key-order"),
])
def test_tools_fit_a_column_only_when_parquet_gives_them_back_as_they_are(schemas: list, fits: bool) -> None:
    assert tools_fit_a_column(schemas) is fits


@pytest.mark.parametrize(("counts", "calls", "column"), [
    pytest.param({"calculate": 2, "search": 1}, 3, [{"name": "calculate", "calls": 2}, {"name": "search", "calls": 1}],
                 id="in-the-order-first-called"),
    pytest.param(None, 2, [{"name": "search", "calls": 2}], id="journaled-when-search-was-the-only-tool"),
    pytest.param(None, 0, [], id="no-call"),
])
def test_calls_are_counted_by_tool(counts: dict | None, calls: int, column: list) -> None:
    result = dataclasses.replace(RESULT, num_tool_calls=calls, tool_calls_by_name=counts)
    assert _row(result)["tool_calls_by_name"] == column
    assert RolloutResult.from_json(result.to_json()) == result
