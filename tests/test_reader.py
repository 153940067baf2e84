"""Reading a loaded input in bounded batches, outside its memory map: the same rows `datasets` gives."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hfdistill.run.inputs import load_input
from hfdistill.run.reader import column_batches

ROWS = 2500  # more than one of the record batches `datasets` writes its cache files in (1000 rows)


def _rows(n: int = ROWS) -> list[dict]:
    return [{"question": f"Q{i}?", "golden_answers": [f"A{i}", "B"], "extra_info": {"index": i, "split": "train"},
             "unused": "x" * (i % 7)} for i in range(n)]


def _parquet(tmp_path: Path) -> str:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(_rows()), path, row_group_size=700)
    return str(path)


def _jsonl(tmp_path: Path) -> str:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return str(path)


def _saved(tmp_path: Path) -> str:
    datasets.Dataset.from_list(_rows()).save_to_disk(str(tmp_path / "saved"))
    return str(tmp_path / "saved")


def _read(ds: datasets.Dataset, columns: list[str], batch_size: int) -> list[dict]:
    batches = list(column_batches(ds, columns, batch_size))
    assert all(len(b[columns[0]]) <= batch_size for b in batches) and all(list(b) == columns for b in batches)
    return [{c: b[c][i] for c in columns} for b in batches for i in range(len(b[columns[0]]))]


@pytest.mark.parametrize("make", [_parquet, _jsonl, _saved], ids=["parquet", "jsonl", "saved"])
@pytest.mark.parametrize("batch_size", [7, 1000, 4096])
def test_the_rows_are_the_datasets_rows_in_order(tmp_path: Path, make, batch_size: int) -> None:
    ds = load_input(make(tmp_path))
    assert ds.cache_files  # read from the files, not through the memory map
    columns = ["question", "golden_answers", "extra_info"]
    assert _read(ds, columns, batch_size) == ds.select_columns(columns).to_list()


@pytest.mark.parametrize("max_samples", [1, 999, 1000, 1001, 2499])
def test_the_first_rows_only_when_samples_are_capped(tmp_path: Path, max_samples: int) -> None:
    ds = load_input(_parquet(tmp_path), max_samples=max_samples)
    assert [r["question"] for r in _read(ds, ["question"], 64)] == [f"Q{i}?" for i in range(max_samples)]


@pytest.mark.parametrize("make", [
    pytest.param(lambda t: datasets.Dataset.from_list(_rows(30)), id="in-memory"),
    pytest.param(lambda t: load_input(_parquet(t)).select([5, 3, 9]), id="picked-rows"),
    pytest.param(lambda t: load_input(_parquet(t)).shuffle(seed=1), id="shuffled"),
])
def test_other_datasets_are_read_through_datasets(tmp_path: Path, make) -> None:
    ds = make(tmp_path)
    assert _read(ds, ["question"], 2) == ds.select_columns(["question"]).to_list()


def _file_pages_mb() -> float:
    """This process's resident file-backed pages (memory maps included), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_pass_over_the_input_leaves_none_of_it_resident(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    text = "y" * 2000
    pq.write_table(pa.table({"question": [f"Q{i}? {text}" for i in range(30_000)]}), path)  # 60 MB as Arrow
    ds = load_input(str(path))
    before = _file_pages_mb()
    assert sum(len(b["question"]) for b in column_batches(ds, ["question"], 1000)) == 30_000
    ours = _file_pages_mb() - before
    assert sum(len(b["question"]) for b in ds.iter(batch_size=1000)) == 30_000  # through the memory map
    mapped = _file_pages_mb() - before - ours
    assert ours < 10 < 40 < mapped, (ours, mapped)
