"""Output files: the parquet (atomic, with its generation record inside) and the failures file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hfdistill.errors import ConfigError, InputError

__all__ = [
    "METADATA_KEY",
    "check_output_path",
    "failures_path",
    "read_record",
    "write_failures",
    "write_parquet",
]

METADATA_KEY = b"hfdistill"
_ROW_GROUP_ROWS = 500  # ~a few MB of conversations: small enough for the Hub's dataset viewer


def check_output_path(path: str | Path) -> Path:
    """Fail before any work when the output cannot be written where asked."""
    out = Path(path).expanduser()
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise ConfigError(f"OUTPUT_FILE {out} is a directory; give a file name such as {out / 'distilled.parquet'}")
    if not parent.is_dir():
        raise ConfigError(f"the directory of OUTPUT_FILE {out} does not exist; create it "
                          f"(mkdir -p {parent}) or choose another --output_file")
    try:  # a real probe: access() says yes to root even where nothing can be created
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=parent)
    except OSError as e:
        raise ConfigError(f"cannot write to {parent} ({e.strerror or e}); choose another --output_file") from None
    os.close(fd)
    os.unlink(probe)
    return out


def failures_path(output: Path) -> Path:
    """`OUT.parquet` -> `OUT.failures.jsonl`, next to the output."""
    stem = output.name[: -len(".parquet")] if output.name.endswith(".parquet") else output.name
    return output.with_name(f"{stem}.failures.jsonl")


def write_parquet(rows: Iterable[dict[str, Any]], path: Path, schema: pa.Schema, *,
                  record: Callable[[int], dict[str, Any]]) -> int:
    """Stream `rows` into `path` in row groups of a few hundred; return how many were written.

    Written via a temp file and a rename: no partial file is ever at `path`. The schema is fixed
    (and carries `datasets`' feature metadata, so `load_dataset` restores the features); the
    generation record, built from the number of rows, goes into the file's key-value metadata
    under `hfdistill` once the rows are in.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    written = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for chunk in _chunks(rows, _ROW_GROUP_ROWS):
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                written += len(chunk)
            if written == 0:
                writer.write_table(schema.empty_table())
            writer.add_key_value_metadata({METADATA_KEY: json.dumps(record(written), ensure_ascii=False,
                                                                    default=str)})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return written


def _chunks(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The generation record stored in an output parquet, or None if it has none."""
    try:
        metadata = pq.read_metadata(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read {path} as parquet ({e}); pass a file written by hfdistill") from None
    raw = metadata.get(METADATA_KEY)
    return json.loads(raw) if raw else None


def write_failures(path: Path, failures: list[dict[str, Any]]) -> None:
    """Replace the failures file with this run's failures; remove it when there are none."""
    if not failures:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for failure in sorted(failures, key=lambda x: (x["input_index"] or 0, x["rollout_index"] or 0)):
            f.write(json.dumps(failure, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
