"""Output rows: one per finished rollout, with a fixed arrow schema so every batch and file agrees.

A fixed schema matters: parquet infers one struct type per column, and a batch whose messages
happen to lack reasoning or tool calls would otherwise be typed `null` and break the next batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import pyarrow as pa

from hfdistill.scoring import score
from hfdistill.types import Trajectory

__all__ = [
    "MESSAGE_TYPE",
    "build_table",
    "output_features",
    "output_schema",
    "result_of",
    "shape_row",
]

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
    ("stop_reason", pa.string()),
    ("assistant_turns", pa.int32()),
    ("num_tool_calls", pa.int32()),
    ("num_tool_errors", pa.int32()),
    ("num_queries", pa.int32()),
    ("usage", pa.struct([("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64())])),
    ("rollout_index", pa.int32()),
    ("input_index", pa.int64()),
]
_INDEX_ONLY = pa.struct([("index", pa.int64())])


def output_schema(tools: list[dict[str, Any]], extra_info_type: pa.DataType | None) -> pa.Schema:
    """The schema of every output row; `extra_info` keeps the input's type (or `{index}`)."""
    tools_type = pa.array([tools]).type
    fields = [("messages", pa.list_(MESSAGE_TYPE)), ("tools", tools_type), *_FIXED_FIELDS,
              ("extra_info", extra_info_type or _INDEX_ONLY)]
    return pa.schema(fields)


def output_features(tools: list[dict[str, Any]], input_features: datasets.Features) -> datasets.Features:
    """`datasets.Features` for `Dataset.map(..., features=...)` given the input's features."""
    extra = input_features.get("extra_info")
    extra_type = datasets.Features({"extra_info": extra}).arrow_schema.field("extra_info").type if extra else None
    return datasets.Features.from_arrow_schema(output_schema(tools, extra_type))


def result_of(traj: Trajectory) -> dict[str, Any]:
    """What a rollout produced, independent of the input row: the part the journal stores."""
    return {
        "messages": [m.to_dict() for m in traj.messages],
        "stop_reason": traj.stop_reason,
        "assistant_turns": traj.assistant_turns,
        "num_tool_calls": traj.num_tool_calls,
        "num_tool_errors": traj.num_tool_errors,
        "num_queries": traj.num_queries,
        "usage": traj.usage.to_dict(),
        "prediction": traj.prediction,
    }


def shape_row(result: Mapping[str, Any], *, question: str, golden_answers: Sequence[str],
              tools: list[dict[str, Any]], extra_info: Any, input_index: int | None,
              rollout_index: int) -> dict[str, Any]:
    """An output row from a rollout result and the input row it came from."""
    s = score(result["prediction"], golden_answers)
    return {
        **result,
        "tools": tools,
        "question": question,
        "golden_answers": list(golden_answers),
        "exact_match": s.exact_match,
        "sub_match": s.sub_match,
        "f1": s.f1,
        "rollout_index": rollout_index,
        "input_index": input_index,
        "extra_info": extra_info if extra_info is not None else {"index": input_index},
    }


def build_table(rows: list[dict[str, Any]], schema: pa.Schema | None, tools: list[dict[str, Any]]) -> pa.Table:
    """Rows as one arrow table; without a known schema, `extra_info`'s type is inferred from the rows."""
    if schema is None:
        extra = pa.array([r["extra_info"] for r in rows]) if rows else pa.array([], _INDEX_ONLY)
        schema = output_schema(tools, extra.type if extra.type != pa.null() else None)
    return pa.Table.from_pylist(rows, schema=schema)
