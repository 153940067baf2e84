"""Reading a loaded input in bounded batches, with plain reads instead of its memory map.

`datasets` memory-maps its Arrow cache files, and every page a pass reads through the map stays in
the process's resident memory for as long as the dataset is open: reading a million questions once
would cost their size in RSS, whatever the run keeps. A run reads its input several times (its
identity, its rollouts, its output), so each pass here reads the cache files instead, one record
batch (at most `datasets`' writer batch, 1000 rows by default) at a time, and keeps only the
columns it needs. A dataset held in memory, with rows picked by an indices mapping, or with
columns that `datasets` decodes (images, audio) is read through `Dataset.iter`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from hfdistill.core.errors import InputError

if TYPE_CHECKING:
    import datasets

__all__ = ["column_batches"]


def column_batches(ds: datasets.Dataset, columns: Sequence[str], batch_size: int) -> Iterator[dict[str, list[Any]]]:
    """The rows of `ds`, in order, as dicts of Python lists of `columns`, at most `batch_size` rows each.

    `ds` is a dataset as `run.inputs.load_input` makes it: a whole loaded dataset, or its first rows.
    """
    files = _cache_files(ds, columns)
    if files is None:
        yield from ds.select_columns(list(columns)).iter(batch_size=batch_size)
        return
    left = len(ds)
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in _file_batches(files, columns):
        batch = batch.slice(0, min(left, batch.num_rows))
        left -= batch.num_rows
        pending.append(batch)
        held += batch.num_rows
        while held >= batch_size or (left == 0 and held):
            table = pa.Table.from_batches(pending)
            yield table.slice(0, batch_size).to_pydict()
            rest = table.slice(batch_size)
            pending, held = rest.to_batches(), rest.num_rows
        if left == 0:
            return
    if left:
        raise InputError(f"the cache files of the input hold {len(ds) - left} of its {len(ds)} rows; clear the "
                         "`datasets` cache (or pass --overwrite) and rerun")


def _cache_files(ds: datasets.Dataset, columns: Sequence[str]) -> list[str] | None:
    """The Arrow files whose rows, from the first, are `ds`'s rows; None to read through `datasets`."""
    from datasets.features.features import require_decoding

    files = [f["filename"] for f in ds.cache_files]
    if not files or ds.data.num_rows != len(ds):  # in memory, or rows picked by an indices mapping
        return None
    if any(require_decoding(ds.features[c]) for c in columns if c in ds.features):
        return None
    for name in files:  # an indices mapping's own file (a shuffle) holds none of the columns
        with pa.OSFile(name) as source:
            if not set(columns) <= set(pa.ipc.open_stream(source).schema.names):
                return None
    return files


def _file_batches(files: Sequence[str], columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    for name in files:
        with pa.OSFile(name) as source:
            reader = pa.ipc.open_stream(source)
            for batch in reader:
                yield batch.select(list(columns))
