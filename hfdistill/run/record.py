"""The generation record: what an output file says of itself, stored in its parquet metadata.

`generate` writes it, `curate` updates it, and `card`, `push`, `report`, the summary and a rerun's
identity check read it, all through `GenerationRecord`. `from_json` reads records of older versions
too (a missing part takes its default), and fails with ValueError on a record of another shape.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hfdistill.curation.funnel import Funnel
from hfdistill.run.progress import RunStats

__all__ = ["CuratedInfo", "GenerationRecord", "InputInfo", "JudgeInfo", "RetrievalInfo", "RolloutOptions",
           "RunOptions", "TeacherInfo", "TemplatesInfo"]

T = TypeVar("T")


@dataclass(frozen=True)
class RolloutOptions:
    """Every option that changes what one rollout produces: a run's fingerprint is a digest of them
    (see `run.identity`). URLs are not among them (a server that moved is the same server); the corpus
    is its content hash and the templates their digests."""

    model: str | None = None  # --model; None: whatever the server lists (each record names the model)
    tool_call_mode: str = "auto"
    temperature: float = 0.7
    top_p: float | None = None
    presence_penalty: float | None = None
    max_tokens: int = 2048
    seed: int | None = None
    max_assistant_turns: int = 3
    topk: int = 3
    query_arg: str = "query_list"
    observation_format: str = "seed"
    corpus: str | None = None
    templates: dict[str, str] = field(default_factory=dict)
    force_answer: bool = True
    max_context_tokens: int | None = None  # None: the server's context window less max_tokens
    retriever: dict[str, Any] | None = None  # a dense or hybrid retriever's identity (None: BM25 or a server)
    # The tools offered, when not search alone: each one's name and schema, the server that runs it (its command or
    # URL, secrets masked) and open's --open-max-chars (see `tools.toolset.toolset_identity`).
    tools: tuple[dict[str, Any], ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["tools"] is None:  # search alone: the fingerprint of a run from before other tools stays its own
            del out["tools"]
        return out

    def tool_names(self) -> list[str]:
        """The names of the tools offered, in the order the model was shown them."""
        return [str(t.get("name")) for t in self.tools] if self.tools is not None else ["search"]


@dataclass(frozen=True)
class TeacherInfo:
    """The teacher that made the rollouts: its model id, its hosts (never credentials), its protocol."""

    model: str | None = None
    hosts: tuple[str, ...] = ()
    protocol: str | None = None


@dataclass(frozen=True)
class JudgeInfo:
    """The judge whose verdicts the file's `judge_correct` holds (`spec`: which judge, see `judge.prompt`)."""

    model: str | None = None
    host: str | None = None
    spec: str | None = None
    calls: int | None = None  # made by the run that wrote the file (None: written by `curate`)
    retries: int | None = None


@dataclass(frozen=True)
class RetrievalInfo:
    """Where observations came from: an embedded retriever's corpus file, or a retrieval server's host."""

    corpus: str | None = None
    host: str | None = None
    retriever: str | None = None  # the embedded retriever: bm25, dense or hybrid (None: bm25, or a server)


@dataclass(frozen=True)
class InputInfo:
    """The input: where it came from, how many questions, which fields held the question and answers."""

    source: str = ""
    kind: str = ""  # file, glob, directory, saved or hub (see run.inputs.input_kind)
    questions: int = 0
    skipped: int = 0
    question_fields: tuple[str, ...] = ()
    answer_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunOptions:
    """Options of the run that change which rows a file holds, or how fast, but no rollout."""

    keep: str = "all"
    keep_malformed: bool = False
    num_rollouts: int = 1
    max_samples: int = -1
    batch_size: int = 16
    concurrency: int | None = None


@dataclass(frozen=True)
class TemplatesInfo:
    names: tuple[str, ...] = ()
    sha256: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CuratedInfo:
    """Set by `curate`: the file it re-curated, the command and when."""

    source: str = ""
    command: str = ""
    created: str = ""


@dataclass(frozen=True)
class GenerationRecord:
    """Everything an output file says of the run that wrote it (see the module docstring)."""

    fingerprint: str
    complete: bool
    rows: int  # in the file
    rollouts: int  # finished rollouts the run accounted for (rows before --keep / --select)
    hfdistill_version: str = "unknown"
    input_digest: str = ""
    view: dict[str, Any] = field(default_factory=dict)  # compared whole: a file of another view is rewritten
    curation: dict[str, Any] = field(default_factory=dict)  # the curation options, option name -> value
    funnel: Funnel | None = None
    judge: JudgeInfo | None = None
    teacher: TeacherInfo = field(default_factory=TeacherInfo)
    retrieval: RetrievalInfo = field(default_factory=RetrievalInfo)
    generation_options: RolloutOptions = field(default_factory=RolloutOptions)
    run_options: RunOptions = field(default_factory=RunOptions)
    templates: TemplatesInfo = field(default_factory=TemplatesInfo)
    input: InputInfo = field(default_factory=InputInfo)
    held_back: dict[str, int] = field(default_factory=dict)
    counts: RunStats = field(default_factory=RunStats)
    command: str = ""
    created: str = ""
    curated: CuratedInfo | None = None

    @property
    def judged(self) -> bool:
        """Whether `judge_correct` holds a judge's verdicts (the file's notion of correct)."""
        return self.judge is not None and self.judge.spec is not None

    @property
    def correct_by(self) -> str:
        """Who decided "correct": the LLM judge (and its model), else exact match."""
        if not self.judged:
            return "exact match"
        assert self.judge is not None
        return f"LLM judge {self.judge.model or ''}".strip()

    def replace(self, **changes: Any) -> GenerationRecord:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return _dump(self)

    @classmethod
    def from_json(cls, data: Any) -> GenerationRecord:
        """A stored record; ValueError names the part that is not what this version reads."""
        return _load(cls, data, "record")


# ---------------------------------------------------------------- (de)serialisation

_OWN_JSON = (Funnel, RunStats)  # types that read and write their own JSON


def _dump(value: Any) -> Any:
    if isinstance(value, _OWN_JSON):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _dump(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_dump(v) for v in value]
    return value


def _load(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} is not an object")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{where}.{f.name} is missing")
    return cls(**kwargs)


def _convert(kind: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return _convert(kind, value, where)
    if kind in _OWN_JSON:
        return kind.from_json(value)
    if dataclasses.is_dataclass(kind):
        return _load(kind, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"{where} is not a list")
        return tuple(_convert(args[0], v, f"{where}[]") for v in value)
    if origin is dict or kind is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} is not an object")
        return dict(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{where} is not a {kind.__name__}")
    return value
