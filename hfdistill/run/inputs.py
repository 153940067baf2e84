"""Loading the input as a `datasets.Dataset` and finding each row's question and golden answers.

Field resolution (docs/input.md): the real HotpotQA "hard" layout (verl RL rows) has no top-level
`question`; the question lives in `extra_info.question` and answers in
`reward_model.ground_truth.target`. Fallbacks cover Search-R1 / FlashRAG and plain layouts.
"""

from __future__ import annotations

import difflib
import glob
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfdistill.core.errors import InputError, first_line
from hfdistill.core.rows import extra_info_of
from hfdistill.run.reader import column_batches

if TYPE_CHECKING:
    import datasets

__all__ = ["DATA_FILES", "FieldPlan", "InputRow", "check_source", "describe_fields", "input_kind", "input_rows",
           "load_input", "plan_fields", "rows_of"]

QUESTION_FIELDS = ("extra_info.question", "question", "prompt")
ANSWER_FIELDS = ("reward_model.ground_truth.target", "golden_answers", "answer", "extra_info.answer")
# Data file suffix -> the `datasets` builder that reads it.
DATA_FILES = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}


def load_input(source: str, *, max_samples: int = -1) -> datasets.Dataset:
    """Load a file, glob, directory, `save_to_disk` folder or Hub id (`name` / `name:split`)."""
    check_source(source)
    ds = _load(source)
    if len(ds) == 0:
        raise InputError(f"input {source} has no rows; point INPUT_FILE / --input_file at a non-empty dataset")
    if max_samples > 0 and max_samples < len(ds):
        ds = ds.select(range(max_samples))
    return ds


def _load(source: str) -> datasets.Dataset:
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return _from_disk(path)
        return _from_files(_data_files_in(path), source)
    if path.is_file():
        return _from_files([str(path)], source)
    if any(ch in source for ch in "*?["):
        files = sorted(f for f in glob.glob(os.path.expanduser(source)) if Path(f).is_file())
        if not files:
            raise InputError(f"no files match {source}; check the pattern in INPUT_FILE / --input_file")
        return _from_files(files, source)
    return _from_hub(source)


def check_source(source: str) -> None:
    """What can be checked about the input without `datasets` and in milliseconds, before anything
    slow: a local-looking name that does not exist (never sent to the Hub), an empty file, a file
    that is not parquet. `load_input` runs it too; the CLI runs it before importing `datasets`."""
    path = Path(source).expanduser()
    if path.is_file():
        _check_file(path, source)
    elif not path.exists() and not any(ch in source for ch in "*?[") and _looks_like_path(source):
        raise InputError(f"input file not found: {source}{_did_you_mean(path)}; set INPUT_FILE or --input_file "
                         "to an existing parquet/jsonl/json/csv file, a directory of them, or a Hub dataset id")


def input_kind(source: str) -> str:
    """"local" for a file, glob, directory or path-like name; "hub" for what would load from the Hub."""
    path = Path(source).expanduser()
    if path.exists() or any(ch in source for ch in "*?[") or _looks_like_path(source):
        return "local"
    return "hub"


def _looks_like_path(source: str) -> bool:
    """A name no Hub dataset id has: a path (`./x`, `a/b/c`, `~/x`, `C:\\x`), a local directory as its
    namespace, or a data file suffix, even mistyped (`questions.jsnol`): Hub ids are `name` or
    `namespace/name`, and a typo sent to the Hub costs half a minute of retries before failing."""
    if source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1:
        return True
    namespace, slash, _ = source.partition("/")
    if slash and Path(namespace).is_dir():
        return True
    suffix = Path(source.split(":")[0]).suffix.lower().lstrip(".")
    return bool(suffix) and (f".{suffix}" in DATA_FILES or _near_data_suffix(suffix))


def _near_data_suffix(suffix: str) -> bool:
    """`jsnol`, `parqeut`, `cvs`: one edit (a transposition counts as one) from a data suffix, two for
    the long ones. Digits never match, so `name.v2` stays a Hub id."""
    if not suffix.isalpha():
        return False
    for known in (s.lstrip(".") for s in DATA_FILES):
        if _edit_distance(suffix, known) <= (1 if len(known) <= 4 else 2):
            return True
    return False


def _edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def _did_you_mean(path: Path) -> str:
    try:
        siblings = [p.name for p in path.parent.iterdir() if p.suffix.lower() in DATA_FILES]
    except OSError:  # the directory is missing or unreadable: no suggestion, the message stands
        return ""
    close = difflib.get_close_matches(path.name, siblings, n=1, cutoff=0.8)
    return f" (did you mean {path.with_name(close[0])}?)" if close else ""


def _check_file(path: Path, source: str) -> None:
    """An empty file or a broken parquet footer, said plainly (the builders raise StopIteration for
    the one and log an Arrow error line of their own for the other)."""
    if path.suffix.lower() not in DATA_FILES:
        return  # _from_files names the supported suffixes
    with path.open("rb") as f:
        head = f.read(4096)
    if not head.strip() and path.stat().st_size <= len(head):
        raise InputError(f"input {source} is an empty file; point INPUT_FILE / --input_file at a dataset with "
                         "at least one row")
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_metadata(path).num_rows
        except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
            raise InputError(f"cannot read {source} as parquet: {first_line(e)}; check it is a complete parquet "
                             "file (was it copied whole?), or point INPUT_FILE / --input_file at another") from None
        if rows == 0:
            raise InputError(f"input {source} has no rows; point INPUT_FILE / --input_file at a non-empty dataset")


def _data_files_in(path: Path) -> list[str]:
    files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_FILES)
    if not files:
        raise InputError(f"directory {path} holds no parquet/jsonl/json/csv files; "
                         "point INPUT_FILE / --input_file at the data files")
    return files


def _from_files(files: Sequence[str], source: str) -> datasets.Dataset:
    import datasets  # ~1 s to import: not needed by the checks above

    for f in files:
        _check_file(Path(f), f)
    kinds = {DATA_FILES.get(Path(f).suffix.lower()) for f in files}
    if None in kinds or len(kinds) != 1:
        raise InputError(f"cannot read {source}: expected files ending in one of "
                         f"{', '.join(sorted(DATA_FILES))} (all of one kind)")
    builder = kinds.pop()
    try:
        return datasets.load_dataset(builder, data_files=list(files), split="train")
    except Exception as e:  # noqa: BLE001 - builders raise anything (even StopIteration on an empty file)
        raise InputError(f"cannot read {source} as {builder}: {first_line(e)}; check the file is valid "
                         f"{builder}") from None


def _from_disk(path: Path) -> datasets.Dataset:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as e:
        raise InputError(f"cannot load the saved dataset at {path}: {first_line(e)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        split = "train" if "train" in loaded else next(iter(loaded))
        return loaded[split]
    return loaded


def _from_hub(source: str) -> datasets.Dataset:
    import datasets

    name, _, split = source.partition(":")
    try:
        return datasets.load_dataset(name, split=split or "train")
    except Exception as e:  # noqa: BLE001 - the Hub raises many types; all mean "could not load"
        raise InputError(f"cannot load {source!r} from the Hugging Face Hub ({first_line(e)}); check the "
                         "dataset id and split, your network and HF_TOKEN, or pass a local file") from None



# ---------------------------------------------------------------- fields


def describe_fields(features: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every field, nested structs included (for error messages)."""
    out = []
    for key, feature in features.items():
        path = f"{prefix}{key}"
        out.append(path)
        if isinstance(feature, dict):
            out.extend(describe_fields(feature, f"{path}."))
    return out


def _has_field(features: Mapping[str, Any], dotted: str) -> bool:
    node: Any = features
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


@dataclass(frozen=True)
class FieldPlan:
    """Which fields, in order of preference, hold the question and the golden answers."""

    question: tuple[str, ...]
    answers: tuple[str, ...]

    def question_of(self, row: Mapping[str, Any]) -> str:
        for field in self.question:
            value = _get(row, field)
            text = _prompt_question(value) if field == "prompt" else _as_text(value)
            if text:
                return text
        return ""

    def answers_of(self, row: Mapping[str, Any]) -> list[str]:
        for field in self.answers:
            found = _as_text_list(_get(row, field))
            if found:
                return found
        return []

    def columns(self, available: Iterable[str]) -> list[str]:
        """The input columns the plan reads (the top-level names of its dotted fields)."""
        return sorted({f.split(".")[0] for f in (*self.question, *self.answers)} & set(available))


@dataclass(frozen=True, slots=True)
class InputRow:
    """One input row as a run sees it: its position, its question ("" when blank), its golden answers and
    (when asked for) the `extra_info` its output rows keep."""

    index: int | None
    question: str
    golden_answers: tuple[str, ...]
    extra_info: Any = None


def rows_of(batch: Mapping[str, Sequence[Any]], plan: FieldPlan, indices: Sequence[int | None], *,
            extra_info: bool = False) -> list[InputRow]:
    """The rows of a batch of columns: the one place a question and its golden answers are read."""
    names = list(batch)
    out = []
    for i, index in enumerate(indices):
        row = {name: batch[name][i] for name in names}
        out.append(InputRow(index, plan.question_of(row), tuple(plan.answers_of(row)),
                            extra_info_of(row, index) if extra_info else None))
    return out


def input_rows(ds: datasets.Dataset, plan: FieldPlan, *, extra_info: bool = False,
               batch_size: int = 1000) -> Iterator[InputRow]:
    """Every row of `ds` in order, read in bounded batches of the columns needed only (`run.reader`)."""
    columns = plan.columns(ds.column_names)
    if extra_info and "extra_info" in ds.column_names:
        columns.append("extra_info")
    start = 0
    for batch in column_batches(ds, columns, batch_size):
        n = len(next(iter(batch.values()))) if batch else 0
        yield from rows_of(batch, plan, range(start, start + n), extra_info=extra_info)
        start += n


def plan_fields(features: Mapping[str, Any], question_field: str | None = None,
                answer_field: str | None = None) -> FieldPlan:
    """Pick question/answer fields present in `features`; fail naming what exists if none is."""
    questions = _candidates(features, question_field, QUESTION_FIELDS, "--question-field")
    if not questions:
        raise InputError(f"cannot find the question: none of {', '.join(QUESTION_FIELDS)} is in the input; "
                         f"fields: {', '.join(describe_fields(features))}; pass --question-field")
    answers = _candidates(features, answer_field, ANSWER_FIELDS, "--answer-field")
    return FieldPlan(question=questions, answers=answers)


def _candidates(features: Mapping[str, Any], explicit: str | None, defaults: tuple[str, ...],
                flag: str) -> tuple[str, ...]:
    """The explicit field (which must exist), else the default fields that exist, in order."""
    if not explicit:
        return tuple(f for f in defaults if _has_field(features, f))
    if not _has_field(features, explicit):
        raise InputError(f"{flag} {explicit!r} is not in the input; fields: {', '.join(describe_fields(features))}")
    return (explicit,)


def _get(row: Mapping[str, Any], dotted: str) -> Any:
    node: Any = row
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _as_text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _as_text_list(value: Any) -> list[str]:
    # Lists may arrive as numpy arrays (pandas-written parquet) or a single string.
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if v is not None and str(v).strip()]
    return [str(value)]


def _prompt_question(prompt: Any) -> str:
    """The last user message of a chat `prompt`, with a leading `Question:` stripped."""
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, (list, tuple)):
        users = [m.get("content") for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
        text = users[-1] if users and isinstance(users[-1], str) else ""
    else:
        return ""
    text = text.strip()
    if text.lower().startswith("question:"):
        text = text[len("question:"):].strip()
    return text
