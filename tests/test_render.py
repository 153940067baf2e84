"""A distilled conversation as readable text, and the rows of an output file read for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hfdistill.core.errors import InputError
from hfdistill.publish.render import load_rows, render_conversation


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}


ROW = {"stop_reason": "answer", "assistant_turns": 2, "num_tool_calls": 1, "exact_match": True, "messages": [
    {"role": "user", "content": "Question: Capital of France?"},
    {"role": "assistant", "content": None, "reasoning_content": "search first",
     "tool_calls": [_call("search", '{"query_list":["capital of Zürich\'s country"]}')]},
    {"role": "tool", "content": "Query: capital\n[1] Paris"},
    {"role": "assistant", "content": "<answer>Paris</answer>", "reasoning_content": None, "tool_calls": None},
]}


def test_one_block_per_message_under_a_head_line() -> None:
    assert render_conversation(ROW) == (
        "stop_reason=answer turns=2 searches=1 exact_match=True\n"
        "--- user\nQuestion: Capital of France?\n"
        "--- assistant\n[thinking] search first\n"
        '[calls search] {"query_list": ["capital of Zürich\'s country"]}\n'
        "--- tool\nQuery: capital\n[1] Paris\n"
        "--- assistant\n<answer>Paris</answer>\n")


def test_an_unscored_row_has_no_exact_match_and_arguments_that_are_not_json_are_shown_as_sent() -> None:
    row = {**ROW, "exact_match": None, "messages": [{"role": "assistant", "tool_calls": [_call("search", "{oops")]}]}
    assert render_conversation(row) == "stop_reason=answer turns=2 searches=1\n--- assistant\n[calls search] {oops\n"


def test_long_texts_are_cut_and_wrapped_keeping_their_line_breaks() -> None:
    row = {"messages": [{"role": "tool", "content": "aaa bbb ccc ddd\n\neee fff"}]}
    assert render_conversation(row, max_chars=20).splitlines() == [
        "stop_reason=None turns=None searches=None", "--- tool", "aaa bbb ccc ddd", "", "eee … [4 more characters]"]
    assert render_conversation(row, width=8).splitlines()[1:] == ["--- tool", "aaa bbb", "ccc ddd", "", "eee fff"]


@pytest.fixture
def output(tmp_path: Path) -> Path:
    path = tmp_path / "out.parquet"
    pq.write_table(pa.table({"messages": [[{"role": "user", "content": f"q{i}"}] for i in range(3)],
                             "question": ["q0", "q1", "q2"]}), path)
    return path


def test_rows_are_read_from_start_for_n_and_stop_at_the_end(output: Path) -> None:
    assert [r["question"] for r in load_rows(output, 1, 5)] == ["q1", "q2"]
    assert load_rows(output)[0]["messages"] == [{"role": "user", "content": "q0"}]


@pytest.mark.parametrize(("make", "start", "match"), [
    pytest.param(lambda p: p.write_text("not parquet"), 0, r"cannot read .* as parquet", id="not-parquet"),
    pytest.param(lambda p: None, 0, r"cannot read .* as parquet", id="missing"),
    pytest.param(lambda p: pq.write_table(pa.table({"question": ["q"]}), p), 0, "has no messages column",
                 id="no-messages"),
    pytest.param(None, 3, r"--row 3 is out of range; .* has 3 rows", id="past-the-end"),
    pytest.param(None, -1, r"--row -1 is out of range", id="negative"),
])
def test_a_file_that_cannot_be_shown_is_an_input_error(output: Path, make: Any, start: int, match: str) -> None:
    path = output
    if make is not None:
        path = output.with_name("other.parquet")
        make(path)
    with pytest.raises(InputError, match=match):
        load_rows(path, start)


@pytest.mark.parametrize("n", [0, -1])
def test_asking_for_no_row_is_an_input_error(output: Path, n: int) -> None:
    with pytest.raises(InputError, match=rf"-n {n} shows no row; pass -n 1 or more"):
        load_rows(output, 0, n)
