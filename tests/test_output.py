"""Output files: the parquet with its record and a read-back row count, the JSONL side files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from hfdistill.core.errors import ConfigError
from hfdistill.run.output import check_output_path, read_record, row_count, write_jsonl, write_parquet
from hfdistill.run.record import GenerationRecord

SCHEMA = pa.schema([("x", pa.int64())])


def _record(rows: int) -> GenerationRecord:
    return GenerationRecord(fingerprint="f", complete=True, rows=rows, rollouts=rows)


def test_the_parquet_carries_its_record_built_from_the_row_count(tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    written = write_parquet(({"x": i} for i in range(1234)), out, SCHEMA, record=_record)
    assert written == row_count(out) == 1234
    assert read_record(out) == _record(1234)
    assert [p.name for p in tmp_path.iterdir()] == ["o.parquet"]


def test_an_empty_output_is_still_a_valid_file(tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    assert write_parquet(iter(()), out, SCHEMA, record=_record) == 0
    assert row_count(out) == 0 and read_record(out) == _record(0)


def test_a_failure_while_writing_leaves_the_previous_file(tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    write_parquet(iter([{"x": 1}]), out, SCHEMA, record=_record)

    def rows():
        yield {"x": 2}
        raise RuntimeError("interrupted mid-write")

    with pytest.raises(RuntimeError):
        write_parquet(rows(), out, SCHEMA, record=_record)
    assert read_record(out) == _record(1)


def test_side_files_are_streamed_in_the_order_given_and_removed_when_empty(tmp_path: Path) -> None:
    path = tmp_path / "o.failures.jsonl"
    entries = ({"input_index": i, "rollout_index": 0} for i in (0, 2))
    assert write_jsonl(path, entries) == 2
    assert [json.loads(line)["input_index"] for line in path.read_text().splitlines()] == [0, 2]
    assert write_jsonl(path, iter([])) == 0
    assert not path.exists()


def test_an_unwritable_output_fails_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "o.parquet")
    with pytest.raises(ConfigError, match="is a directory"):
        check_output_path(tmp_path)
