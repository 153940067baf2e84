"""Checks every docs/verl.md rule verl's MultiTurnSFTDataset relies on, on a written output file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _plain(value: Any) -> Any:
    """What verl does to a pandas cell: numpy arrays to lists, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, np.ndarray)):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    return value


def _nulls(value: Any, path: str = "") -> list[str]:
    if value is None:
        return [path or "<root>"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _nulls(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _nulls(v, f"{path}[{i}]")]
    return []


def check_output(path: str | Path) -> list[dict[str, Any]]:
    """Read `path` as verl does (pandas, pyarrow) and assert every rule; return the rows as dicts."""
    df = pd.read_parquet(path)
    assert "images" not in df.columns and "videos" not in df.columns
    if "enable_thinking" in df.columns:
        assert all(isinstance(v, (bool, np.bool_)) for v in df["enable_thinking"])
    rows = [{k: _plain(v) for k, v in row.items()} for row in df.to_dict(orient="records")]
    first_tools = rows[0]["tools"] if rows else None
    for i, row in enumerate(rows):
        tools = row["tools"]
        assert isinstance(tools, list), f"row {i}: tools must be a list of dicts, got {type(tools)}"
        assert all(isinstance(t, dict) for t in tools), f"row {i}: tools must hold dicts"
        assert not _nulls(tools), f"row {i}: nulls in tool schemas at {_nulls(tools)}"
        assert tools == first_tools, f"row {i}: tool schemas differ from row 0"
        check_messages(row["messages"], where=f"row {i}")
    return rows


def check_messages(messages: list[dict[str, Any]], where: str = "") -> None:
    assert messages[0]["role"] == "system" and messages[1]["role"] == "user", where
    pending: str | None = None
    for j, m in enumerate(messages):
        at = f"{where} message {j}"
        assert m["role"] in ("system", "user", "assistant", "tool"), at
        assert isinstance(m["content"], str), f"{at}: content must be a string, got {m['content']!r}"
        if m["role"] == "assistant":
            assert pending is None, f"{at}: previous tool call {pending} has no tool message"
            calls = m.get("tool_calls") or []
            assert len(calls) <= 1, f"{at}: one executed call per assistant turn"
            for call in calls:
                assert isinstance(call["id"], str) and call["id"], f"{at}: call without id"
                assert call["type"] == "function", at
                assert isinstance(call["function"]["arguments"], str), f"{at}: arguments must be a JSON string"
                assert isinstance(json.loads(call["function"]["arguments"]), dict), at
                pending = call["id"]
        elif m["role"] == "tool":
            prev = messages[j - 1]
            assert prev["role"] == "assistant", f"{at}: a tool message follows an assistant turn"
            if prev.get("tool_calls"):
                assert m["tool_call_id"] == pending, f"{at}: tool_call_id {m['tool_call_id']} != {pending}"
            else:
                # a call the model wrote but that was not JSON: no call to match, text kept in content
                assert m["tool_call_id"] is None and "<tool_call>" in prev["content"], at
            pending = None
    assert pending is None, f"{where}: last tool call has no tool message"
