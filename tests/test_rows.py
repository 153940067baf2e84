"""Row shaping: one fixed schema, scores from golden answers, extra_info kept as is, quality flags."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest

from hfdistill.core.records import RolloutResult
from hfdistill.core.rows import build_table, extra_info_of, output_schema
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
