"""Readable text of a distilled conversation (for `hfdistill inspect` and the dataset card)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from hfdistill.core.errors import InputError

__all__ = ["load_rows", "render_conversation"]


def load_rows(path: str | Path, start: int = 0, n: int = 1) -> list[dict[str, Any]]:
    """Rows `start`..`start+n` of an output parquet, as Python dicts."""
    if n < 1:
        raise InputError(f"-n {n} shows no row; pass -n 1 or more")
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path} as parquet ({e}); pass a file written by hfdistill generate") from None
    if "messages" not in table.column_names:
        raise InputError(f"{path} has no messages column; pass a file written by hfdistill generate")
    if not 0 <= start < table.num_rows:
        raise InputError(f"--row {start} is out of range; {path} has {table.num_rows} rows")
    return table.slice(start, n).to_pylist()


def render_conversation(row: Mapping[str, Any], *, width: int = 100, max_chars: int = 1200) -> str:
    """The conversation with one block per message; long texts are cut at `max_chars`."""
    lines = []
    head = [f"stop_reason={row.get('stop_reason')}", f"turns={row.get('assistant_turns')}",
            f"searches={row.get('num_tool_calls')}"]
    if row.get("exact_match") is not None:
        head.append(f"exact_match={row.get('exact_match')}")
    lines.append(" ".join(head))
    for message in row.get("messages") or ():
        lines.append(f"--- {message['role']}")
        if message.get("reasoning_content"):
            lines.append(_block("[thinking] " + message["reasoning_content"], width, max_chars))
        if message.get("content"):
            lines.append(_block(message["content"], width, max_chars))
        for call in message.get("tool_calls") or ():
            fn = call["function"]
            lines.append(f"[calls {fn['name']}] {_compact(fn['arguments'])}")
    return "\n".join(lines) + "\n"


def _compact(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), ensure_ascii=False)
    except ValueError:
        return arguments


def _block(text: str, width: int, max_chars: int) -> str:
    if len(text) > max_chars:
        text = text[:max_chars] + f" … [{len(text) - max_chars} more characters]"
    return "\n".join(textwrap.fill(p, width, replace_whitespace=False) if p.strip() else p
                     for p in text.split("\n"))
