"""Output rows: one per finished rollout, with a fixed arrow schema so every batch and file agrees.

A fixed schema matters: parquet infers one struct type per column, and a batch whose messages
happen to lack reasoning or tool calls would otherwise be typed `null` and break the next batch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from hfdistill.core.scoring import score

if TYPE_CHECKING:
    import datasets
from hfdistill.core.records import RolloutResult, Verdict

__all__ = [
    "MALFORMED_CALL",
    "MESSAGE_TYPE",
    "build_table",
    "extra_info_of",
    "output_features",
    "output_schema",
    "shape_row",
    "tools_fit_a_column",
]

# A turn whose tool call was not even JSON: one kind of tool_error (see curation.flags), held back by default.
MALFORMED_CALL = "malformed_call"

_TOOL_CALL_TYPE = pa.struct([
    ("id", pa.string()),
    ("type", pa.string()),
    ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())])),
])
MESSAGE_TYPE = pa.struct([
    ("role", pa.string()),
    ("content", pa.string()),
    ("reasoning_content", pa.string()),
    ("tool_calls", pa.list_(_TOOL_CALL_TYPE)),
    ("tool_call_id", pa.string()),
    ("name", pa.string()),
])
_FIXED_FIELDS = [
    ("question", pa.string()),
    ("golden_answers", pa.list_(pa.string())),
    ("prediction", pa.string()),
    ("exact_match", pa.bool_()),
    ("sub_match", pa.bool_()),
    ("f1", pa.float64()),
    ("judge_correct", pa.bool_()),  # the LLM judge's verdict; null when not judged
    ("judge_rationale", pa.string()),
    ("pass_rate", pa.float64()),  # the fraction of the question's rollouts that are correct
    ("stop_reason", pa.string()),
    ("assistant_turns", pa.int32()),
    ("num_tool_calls", pa.int32()),
    # the calls run by tool, in the order first called (they sum to num_tool_calls)
    ("tool_calls_by_name", pa.list_(pa.struct([("name", pa.string()), ("calls", pa.int32())]))),
    ("num_tool_errors", pa.int32()),
    ("num_queries", pa.int32()),
    ("quality_flags", pa.list_(pa.string())),
    ("usage", pa.struct([("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64())])),
    ("num_tokens", pa.int64()),  # the row's length as verl renders it for the student (--student-tokenizer)
    ("rollout_index", pa.int32()),
    ("input_index", pa.int64()),
]
_INDEX_ONLY = pa.struct([("index", pa.int64())])


def tools_fit_a_column(schemas: list[dict[str, Any]]) -> bool:
    """Whether parquet holds these tool schemas exactly: one struct type serves every tool of the column, so
    schemas of different shapes come back padded with null keys (or cannot be typed at all)."""
    try:
        stored = pa.array([schemas]).to_pylist()[0]
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return False
    return json.dumps(stored) == json.dumps(schemas)  # (also the key order, and 1 against 1.0)


def output_schema(tools: list[dict[str, Any]], extra_info_type: pa.DataType | None) -> pa.Schema:
    """The schema of every output row; `extra_info` keeps the input's type (or `{index}`)."""
    tools_type = pa.array([tools]).type
    fields = [("messages", pa.list_(MESSAGE_TYPE)), ("tools", tools_type), *_FIXED_FIELDS,
              ("extra_info", extra_info_type or _INDEX_ONLY)]
    return pa.schema(fields)


def output_features(tools: list[dict[str, Any]], input_features: datasets.Features) -> datasets.Features:
    """`datasets.Features` for `Dataset.map(..., features=...)` given the input's features."""
    import datasets  # here: the command line imports this module's constants, and `datasets` takes a second

    extra = input_features.get("extra_info")
    extra_type = datasets.Features({"extra_info": extra}).arrow_schema.field("extra_info").type if extra else None
    return datasets.Features.from_arrow_schema(output_schema(tools, extra_type))


def extra_info_of(row: Mapping[str, Any], input_index: int | None) -> Any:
    """The input's `extra_info` as is (null stays null); `{index}` when the input has no such column."""
    return row.get("extra_info", {"index": input_index})


def shape_row(result: RolloutResult, *, question: str, golden_answers: Sequence[str],
              tools: list[dict[str, Any]], extra_info: Any, input_index: int | None,
              rollout_index: int, flags: Sequence[str] = (), verdict: Verdict | None = None) -> dict[str, Any]:
    """An output row from a rollout result and the input row it came from.

    The curation layer supplies the flags and the judge's verdict (`curation.rows.curated_row`);
    `pass_rate` and `num_tokens` are filled when a file is curated (they need the question's other
    rollouts, and the student's tokenizer). Exact match is scored here, once per row.
    """
    s = score(result.prediction, golden_answers)
    return {
        "messages": result.messages,
        "tools": tools,
        "question": question,
        "golden_answers": list(golden_answers),
        "prediction": result.prediction,
        "exact_match": s.exact_match,
        "sub_match": s.sub_match,
        "f1": s.f1,
        "judge_correct": verdict.correct if verdict is not None else None,
        "judge_rationale": verdict.rationale if verdict is not None else None,
        "pass_rate": None,
        "stop_reason": result.stop_reason,
        "assistant_turns": result.assistant_turns,
        "num_tool_calls": result.num_tool_calls,
        "tool_calls_by_name": [{"name": k, "calls": v} for k, v in result.calls_by_name().items()],
        "num_tool_errors": result.num_tool_errors,
        "num_queries": result.num_queries,
        "quality_flags": list(flags),
        "usage": result.usage.to_dict(),
        "num_tokens": None,
        "rollout_index": rollout_index,
        "input_index": input_index,
        "extra_info": extra_info,
    }


def build_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows as one arrow table of the run's fixed schema."""
    return pa.Table.from_pylist(rows, schema=schema)
