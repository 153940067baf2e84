"""Dense retrieval as values: an encoder's conventions per model family, and the options of a dense
retriever (which index, which encoder, how queries are batched). Pure: nothing here loads a model.

The conventions are Search-R1's (its `retrieval_server.py` and `index_builder.py`), which is what a
student trained with Search-R1 sees: e5 models get `query: ` / `passage: ` prefixes, BGE models an
instruction before each query; embeddings are the attention-masked mean of the last hidden states,
L2-normalised (except DPR); queries are cut at 256 tokens, passages at 180 when indexing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from hfdistill.core.errors import ConfigError

__all__ = ["DEVICES", "POOLINGS", "RETRIEVER_KINDS", "DenseOptions", "EncoderOverrides", "EncoderSpec",
           "conventions", "family_of"]

RETRIEVER_KINDS = ("bm25", "dense", "hybrid")
POOLINGS = ("mean", "cls", "pooler")
DEVICES = ("auto", "cpu", "cuda")
BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "
QUERY_MAX_LENGTH = 256  # Search-R1's server
PASSAGE_MAX_LENGTH = 180  # Search-R1's index builder


@dataclass(frozen=True)
class EncoderSpec:
    """How text becomes a vector for one index: the model, its prefixes, pooling and lengths."""

    name: str  # a Hugging Face model id or a local directory
    family: str  # e5, bge, dpr or other: where the defaults below came from
    query_prefix: str = ""
    passage_prefix: str = ""
    pooling: str = "mean"
    normalize: bool = True
    query_max_length: int = QUERY_MAX_LENGTH
    passage_max_length: int = PASSAGE_MAX_LENGTH

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"--pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        for what, value in (("query", self.query_max_length), ("passage", self.passage_max_length)):
            if not isinstance(value, int) or value < 2:
                raise ConfigError(f"--{what}-max-length must be an integer >= 2, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def describe(self) -> str:
        """One line for logs: what a query goes through."""
        prefix = f"queries prefixed {self.query_prefix!r}" if self.query_prefix else "no query prefix"
        norm = "L2-normalised" if self.normalize else "not normalised"
        return (f"{self.name} ({self.family} conventions: {prefix}, {self.pooling} pooling, {norm}, queries cut at "
                f"{self.query_max_length} tokens)")


@dataclass(frozen=True)
class EncoderOverrides:
    """Settings that replace a family's defaults; None keeps the default."""

    query_prefix: str | None = None
    passage_prefix: str | None = None
    pooling: str | None = None
    normalize: bool | None = None
    query_max_length: int | None = None
    passage_max_length: int | None = None

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def family_of(name: str) -> str:
    """The model family Search-R1 keys its conventions on, read from the model's name."""
    # A hub id is read whole (`intfloat/e5-base-v2`); a local path by its last part only, so that the
    # directories above it (`/data/e5-runs/minilm`) do not decide.
    hub_id = name.count("/") <= 1 and not name.startswith((".", "/", "~"))
    lowered = (name if hub_id else PurePath(name.rstrip("/")).name).lower()
    for family in ("e5", "bge", "dpr"):
        if family in lowered:
            return family
    return "other"


def conventions(name: str, overrides: EncoderOverrides | None = None) -> EncoderSpec:
    """The spec Search-R1 would use for the model `name`, with `overrides` applied."""
    family = family_of(name)
    defaults: dict[str, Any] = {"e5": {"query_prefix": "query: ", "passage_prefix": "passage: "},
                                "bge": {"query_prefix": BGE_QUERY_INSTRUCTION},
                                "dpr": {"normalize": False}}.get(family, {})
    return EncoderSpec(name=name, family=family, **{**defaults, **(overrides or EncoderOverrides()).given()})


@dataclass(frozen=True)
class DenseOptions:
    """A dense retriever: which index, which encoder, and how concurrent queries are batched."""

    index: str  # a directory built by `hfdistill index`, or a bare faiss file (Search-R1's e5_Flat.index)
    encoder: str | None = None  # required for a bare index; must agree with the manifest otherwise
    overrides: EncoderOverrides = dataclasses.field(default_factory=EncoderOverrides)
    device: str = "auto"  # auto: the GPU when one is visible
    batch_wait_ms: float = 2.0  # how long a lone query waits for company
    max_batch: int = 512  # queries encoded and searched together at most
    batching: bool = True  # False: one request at a time (for comparison)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if not 0 <= self.batch_wait_ms <= 1000:
            raise ConfigError(f"--batch-wait-ms must be between 0 and 1000, got {self.batch_wait_ms}")
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ConfigError(f"--max-batch must be >= 1, got {self.max_batch}")
