"""Output files: the parquet (with its generation record inside), the failures and skipped files.

Every file is replaced atomically (`atomic`); the parquet's row count is read back from its
footer, so what a run reports is what the file holds.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hfdistill.core.atomic import atomic_path
from hfdistill.core.errors import ConfigError, InputError
from hfdistill.run.record import GenerationRecord

__all__ = [
    "METADATA_KEY",
    "check_output_path",
    "failures_path",
    "read_record",
    "row_count",
    "skipped_path",
    "write_jsonl",
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
    return output.with_name(f"{_stem(output)}.failures.jsonl")


def skipped_path(output: Path) -> Path:
    """`OUT.parquet` -> `OUT.skipped.jsonl`: input rows never sent to the teacher (blank questions)."""
    return output.with_name(f"{_stem(output)}.skipped.jsonl")


def _stem(output: Path) -> str:
    return output.name[: -len(".parquet")] if output.name.endswith(".parquet") else output.name


def write_parquet(rows: Iterable[dict[str, Any]], path: Path, schema: pa.Schema, *,
                  record: Callable[[int], GenerationRecord]) -> int:
    """Stream `rows` into `path` in row groups of a few hundred; return how many were written.

    Written atomically: no partial file is ever at `path`. The schema is fixed (and carries
    `datasets`' feature metadata, so `load_dataset` restores the features); the generation record,
    built from the number of rows, goes into the file's key-value metadata under `hfdistill` once
    the rows are in. The count returned is read back from the written file's footer.
    """
    written = 0
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for chunk in _chunks(rows, _ROW_GROUP_ROWS):
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                written += len(chunk)
            if written == 0:
                writer.write_table(schema.empty_table())
            writer.add_key_value_metadata({METADATA_KEY: json.dumps(record(written).to_json(), ensure_ascii=False,
                                                                    default=str)})
        on_disk = row_count(tmp)
        if on_disk != written:
            raise OSError(f"wrote {written} rows but the file holds {on_disk}")
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


def read_record(path: str | Path) -> GenerationRecord | None:
    """The generation record stored in an output parquet, or None if it has none."""
    try:
        metadata = pq.read_metadata(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read {path} as parquet ({e}); pass a file written by hfdistill") from None
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return None
    try:
        return GenerationRecord.from_json(json.loads(raw))
    except ValueError as e:
        raise InputError(f"{path} holds an hfdistill record this version cannot read ({e}); write it again with "
                         "this version (`hfdistill generate` with the same options, or `hfdistill curate`)") from None


def row_count(path: str | Path) -> int:
    """Rows in a parquet file, from its footer."""
    try:
        return pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"cannot read {path} as parquet ({e}); pass a file written by hfdistill") from None


def write_jsonl(path: Path, entries: Iterable[dict[str, Any]]) -> int:
    """Replace `path` with one JSON line per entry, streamed in the order given (callers give input order);
    remove it when there are none. Returns how many lines it holds."""
    entries = iter(entries)
    first = next(entries, None)
    if first is None:
        path.unlink(missing_ok=True)
        return 0
    written = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for entry in itertools.chain([first], entries):
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            written += 1
    return written
