"""Reading a vLLM server's log: the last line (what it is doing while it starts), and the line that says why
it failed (the root cause a traceback ends with, not vLLM's generic "see root cause above" wrappers)."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["last_error_line", "last_line", "read_since"]

_TAIL_BYTES = 256 * 1024
_LIMIT = 300  # characters of a quoted line
# `(EngineCore_DP0 pid=12) ERROR 12-04 20:47:49 [core.py:1510] ` before vLLM's own lines
_PREFIX = re.compile(r"^\([^)]*pid=\d+\)\s*(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) [\d-]+ [\d:.]+ \[[^\]]*\]\s*)?")
# `RuntimeError: ...`, `torch.OutOfMemoryError: CUDA out of memory...`, argparse's `prog: error: ...`
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit)\b(?::\s*\S.*)?$|^\S+: error: \S.*$")
# What vLLM raises around the real failure, pointing back at it.
_OURS = "--- hfdistill:"
_WRAPPERS = ("see root cause above", "see stack trace for root cause", "engine core initialization failed",
             "initialization failed due to an exception in a background process")


def read_since(path: Path, offset: int) -> str:
    """The log's text from byte `offset` (where this start of the server began), at most its last 256 KiB."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(offset, size - _TAIL_BYTES))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _lines(text: str) -> list[str]:
    """Lines without vLLM's prefix; our own header line (`--- hfdistill: ...`) is not the server's."""
    return [_PREFIX.sub("", line).strip() if not line.startswith(_OURS) else ""
            for line in text.replace("\r", "\n").splitlines()]


def last_line(text: str) -> str:
    """The last line that says something (progress bars included), vLLM's prefix removed."""
    return next((line[:_LIMIT] for line in reversed(_lines(text)) if line), "")


def last_error_line(text: str) -> str:
    """The last exception line that is not a wrapper of another; else the last line logged as an error; else ""."""
    lines = _lines(text)
    for line in reversed(lines):
        if _EXCEPTION.match(line) and not any(w in line.lower() for w in _WRAPPERS):
            return line[:_LIMIT]
    errors = [line for raw, line in zip(text.replace("\r", "\n").splitlines(), lines, strict=True)
              if line and " ERROR " in f" {raw} "]
    return errors[-1][:_LIMIT] if errors else ""
