"""`DistillConfig`: every option of a run, validated where it enters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hfdistill.core.encoders import RETRIEVER_KINDS, DenseOptions
from hfdistill.core.errors import ConfigError
from hfdistill.core.retry import RetryPolicy
from hfdistill.core.toolspec import ToolOptions

__all__ = ["DEFAULT_CONCURRENCY_PER_ENDPOINT", "OBSERVATION_FORMATS", "PRIORITY_MODES", "TOOL_CALL_MODES",
           "DistillConfig", "JudgeConfig"]

TOOL_CALL_MODES = ("auto", "native", "text")
# vLLM request `priority` (served lowest first with --scheduling-policy priority): on, off, or auto (on
# until a server refuses it, as vLLM's default fcfs policy does, then off for that server).
PRIORITY_MODES = ("auto", "on", "off")
OBSERVATION_FORMATS = ("seed", "verl")  # the original tool's tool message, or verl's search tool's
# vLLM queues what exceeds its sequence slots at no cost, while rollouts spend part of their
# life in retrieval; 512 per endpoint keeps a 256-slot server full (see benchmarks/).
DEFAULT_CONCURRENCY_PER_ENDPOINT = 512


@dataclass(frozen=True)
class JudgeConfig:
    """The LLM judge: an OpenAI-compatible server (it may be the teacher's own). Not a rollout option:
    changing it re-judges, never regenerates."""

    url: str
    model: str | None = None  # None: the id the server lists
    api_key: str = dataclasses.field(default="EMPTY", repr=False, compare=False)
    max_tokens: int = 1024  # a rationale and the verdict; a reasoning judge needs room to think

    def __post_init__(self) -> None:
        _check_url("--judge-url", self.url.rstrip("/"))
        _positive("judge max_tokens", self.max_tokens)


@dataclass(frozen=True)
class DistillConfig:
    """Options of a distillation run. Defaults are the original tool's where it had one."""

    vllm_url: str = "http://localhost:8000/v1"  # comma-separated for several endpoints
    retrieval_url: str = "http://127.0.0.1:8000/retrieve"
    corpus: str | None = None  # search this JSONL in-process (BM25, dense, hybrid) instead of retrieval_url
    index_dir: str | None = None  # the BM25 index's directory
    retriever: str = "bm25"  # over `corpus`: bm25, dense (needs `dense`) or hybrid (both, fused)
    dense: DenseOptions | None = None  # the dense index and its encoder
    model: str | None = None  # None: the id served at /v1/models
    api_key: str = dataclasses.field(default="EMPTY", repr=False, compare=False)
    max_assistant_turns: int = 3
    temperature: float = 0.7
    top_p: float | None = None
    presence_penalty: float | None = None
    max_tokens: int = 2048
    seed: int | None = None
    topk: int = 3
    tool_call_mode: str = "auto"
    priority: str = "auto"  # see PRIORITY_MODES; never changes a rollout, only when its turns are served
    query_arg: str = "query_list"
    observation_format: str = "seed"
    template_dir: str | None = None
    num_rollouts: int = 1
    concurrency: int | None = None  # None: DEFAULT_CONCURRENCY_PER_ENDPOINT per teacher endpoint
    question_field: str | None = None
    answer_field: str | None = None
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    judge: JudgeConfig | None = None  # judges each rollout's answer when set (see curation)
    # At the context limit the teacher is asked for its final answer (as Tongyi's runner does) instead of
    # the conversation being lost; the limit is this many prompt tokens, or (None) the server's
    # max_model_len less max_tokens.
    force_answer: bool = True
    max_context_tokens: int | None = None
    tools: ToolOptions = dataclasses.field(default_factory=ToolOptions)  # MCP servers, --tools, open's limit

    def __post_init__(self) -> None:
        self._check_urls()
        self._check_retriever()
        if self.tools.offers("open") and self.corpus is None:
            raise ConfigError("--tools open reads the documents of the embedded corpus: pass --corpus (BM25, dense "
                              "or hybrid); a retrieval server's documents cannot be opened")
        _positive("max_assistant_turns", self.max_assistant_turns)
        _positive("max_tokens", self.max_tokens)
        _positive("topk", self.topk)
        _positive("num_rollouts", self.num_rollouts)
        if self.concurrency is not None:
            _positive("concurrency", self.concurrency)
        if self.max_context_tokens is not None:
            _positive("max context tokens", self.max_context_tokens)
        if not 0 <= self.temperature <= 2:
            raise ConfigError(f"--temperature must be between 0 and 2, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"--top_p must be in (0, 1], got {self.top_p}")
        if self.presence_penalty is not None and not -2 <= self.presence_penalty <= 2:
            raise ConfigError(f"--presence_penalty must be between -2 and 2, got {self.presence_penalty}")
        if self.priority not in PRIORITY_MODES:
            raise ConfigError(f"--priority must be one of {', '.join(PRIORITY_MODES)}, got {self.priority!r}")
        if self.tool_call_mode not in TOOL_CALL_MODES:
            raise ConfigError(f"--tool-call-mode must be one of {', '.join(TOOL_CALL_MODES)}, "
                              f"got {self.tool_call_mode!r}")
        if self.query_arg not in ("query_list", "query"):
            raise ConfigError(f"--query-arg must be query_list or query, got {self.query_arg!r}")
        if self.observation_format not in OBSERVATION_FORMATS:
            raise ConfigError(f"--observation-format must be one of {', '.join(OBSERVATION_FORMATS)}, "
                              f"got {self.observation_format!r}")
        _positive("retry attempts", self.retry.attempts)
        if self.retry.stall_probe <= 0:
            raise ConfigError(f"the stall probe interval must be > 0 seconds, got {self.retry.stall_probe}")
        if self.retry.timeout <= 0:
            raise ConfigError(f"--request-timeout must be > 0 seconds, got {self.retry.timeout}")

    def _check_urls(self) -> None:
        if not self.endpoints:
            raise ConfigError("VLLM_URL / --vllm_url is empty; set it to the server's /v1 URL, "
                              "e.g. http://localhost:8000/v1")
        for url in self.endpoints:
            _check_url("VLLM_URL / --vllm_url", url)
        if self.corpus is None:
            _check_url("RETRIEVAL_URL / --retrieval_url", self.retrieval_url)

    def _check_retriever(self) -> None:
        if self.retriever not in RETRIEVER_KINDS:
            raise ConfigError(f"--retriever must be one of {', '.join(RETRIEVER_KINDS)}, got {self.retriever!r}")
        if self.retriever != "bm25" and self.dense is None:
            raise ConfigError(f"--retriever {self.retriever} needs --index (a dense index directory, or a faiss file "
                              "with --encoder)")
        if self.retriever == "bm25" and self.dense is not None:
            raise ConfigError("--retriever bm25 does not use the dense --index: drop one of them")
        if self.dense is not None and self.corpus is None:
            raise ConfigError("--index needs --corpus: the passages the index numbers are read from it")

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Teacher base URLs, without trailing slashes."""
        return tuple(u.strip().rstrip("/") for u in self.vllm_url.split(",") if u.strip())

    @property
    def window(self) -> int:
        """Rollouts in flight at once across all map batches."""
        return self.concurrency or DEFAULT_CONCURRENCY_PER_ENDPOINT * len(self.endpoints)

    def replace(self, **changes: Any) -> DistillConfig:
        return dataclasses.replace(self, **changes)


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"--{name.replace(' ', '_')} must be >= 1, got {value}")


def _check_url(what: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} {url!r} is not an http(s) URL; use e.g. http://localhost:8000/v1")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{what} {url!r} has an invalid port") from None
