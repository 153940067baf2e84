"""Atomic file replacement: the one way hfdistill writes a file that others read.

A temp file with a unique name in the target's directory is written, flushed to disk, renamed
over the target, and the directory entry is flushed too. A reader (or a crash at any instant)
sees the old file or the new one, never a part; two writers never share a temp name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "fsync"]


@contextlib.contextmanager
def atomic_path(path: str | Path, *, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temp path next to `path`; when the block succeeds, it replaces `path` durably.

    On an exception the temp file is removed and `path` is left as it was.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fsync(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        fsync(target.parent)  # the rename itself
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def fsync(path: str | Path) -> None:
    """Flush a file, or a directory's entries (a rename or a new file in it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
