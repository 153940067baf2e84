"""Small Search-R1 corpora for the retriever tests."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

# One passage per line in the Search-R1 `contents` shape; ids as the real wiki-18 corpus has them.
CITIES: list[dict[str, Any]] = [
    {"id": "0", "contents": '"Paris"\nParis is the capital and largest city of France.'},
    {"id": "1", "contents": '"Berlin"\nBerlin is the capital of Germany and its largest city.'},
    {"id": "2", "contents": '"Madrid"\nMadrid is the capital of Spain, on the Manzanares river.'},
    {"id": "3", "contents": '"Zyzzyva"\nZyzzyva is a genus of weevils found in South America.'},
    {"id": "4", "contents": '"Lyon"\nLyon is a city in France, at the confluence of two rivers.'},
    {"id": "5", "contents": '"Kyoto"\nKyoto (京都) was the capital of Japan for over a thousand years; café.'},
]


def write_jsonl(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    """Write rows as JSONL; a str row is written verbatim (to make bad lines)."""
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def tool_messages(path: Path) -> list[str]:
    """Every tool observation of a verl-checked output file, in row order."""
    from tests.verl_rules import check_output

    return [m["content"] for r in check_output(path) for m in r["messages"] if m["role"] == "tool"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
