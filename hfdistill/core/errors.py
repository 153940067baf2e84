"""The one exception tree of hfdistill.

    HfdistillError              anything the user can act on; the CLI prints it as one line
    ├── ConfigError             a bad option or environment variable (CLI exit 2)
    ├── InputError              the input dataset cannot be read or lacks a field (exit 2)
    ├── TemplateError           a template is missing, unreadable or uses an unknown variable (exit 2)
    ├── ServiceError            a server failed; says whether a retry may help
    │   ├── TeacherError        the teacher server failed or refused a request
    │   │   └── ContextLengthError  the conversation no longer fits the model's context
    │   ├── RetrievalError      the retrieval server or embedded retriever failed
    │   ├── ToolServerError     a tool's server (MCP) failed: its cause names it (mcp_<server>_<fault>)
    │   └── JudgeError          the LLM judge failed or answered no verdict (its rollout stays unjudged)
    ├── RolloutError            a rollout stopped on one of the two above; its row is a failure
    ├── CorpusError             a retrieval corpus line cannot be read (exit 2)
    ├── JournalError            the run directory cannot be used
    │   └── RunLockedError      another process is writing the same output
    ├── HubError                pushing to or reading from the Hugging Face Hub failed
    ├── ClusterError            the Ray cluster cannot be reached or cannot run the work
    ├── ServeError              a teacher server hfdistill starts (--serve) did not start (exit 2)
    ├── ServerLostError         a teacher server hfdistill started kept dying; the run stopped for it
    └── Interrupted             the run was stopped by a signal; finished work is kept

Messages name the bad value and the fix. Foreign exceptions are translated into these where they
enter: HTTP's (aiohttp, asyncio, OSError, JSON) and MCP's transports' (httpx2, anyio, the SDK's) in
hfdistill/edge.py only.
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "ConfigError",
    "ContextLengthError",
    "CorpusError",
    "HfdistillError",
    "HubError",
    "InputError",
    "Interrupted",
    "JournalError",
    "JudgeError",
    "RetrievalError",
    "RolloutError",
    "RunLockedError",
    "ServeError",
    "ServerLostError",
    "ServiceError",
    "TeacherError",
    "TemplateError",
    "ToolServerError",
    "first_line",
]


class HfdistillError(Exception):
    """Base class: an expected problem with a message that tells the user what to do."""

    exit_code = 1


class ConfigError(HfdistillError):
    """An option or environment variable has a value hfdistill cannot use."""

    exit_code = 2


class InputError(HfdistillError):
    """The input dataset cannot be loaded or lacks what a rollout needs."""

    exit_code = 2


class TemplateError(HfdistillError):
    """A Jinja template is missing, unreadable, invalid or uses an unknown variable."""

    exit_code = 2


class CorpusError(HfdistillError):
    """A retrieval corpus file cannot be read; the message names the file and line."""

    exit_code = 2


class ServiceError(HfdistillError):
    """A server (teacher or retrieval) failed or refused a request.

    `transient` tells the retry policy whether trying again may help; `cause` is a short
    machine-readable label used to count failures by kind in the summary (`<server>_<fault>`, see
    hfdistill/edge.py); `retry_after` is the server's Retry-After in seconds, when it sent one;
    `throttled` marks the server's rate limit (HTTP 429), which waits without spending the retries.
    """

    default_cause = "service"

    def __init__(self, message: str, *, transient: bool = False, cause: str | None = None,
                 retry_after: float | None = None, throttled: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.cause = cause or self.default_cause
        self.retry_after = retry_after
        self.throttled = throttled


class TeacherError(ServiceError):
    """The teacher server failed, refused a request, or answered something unusable."""

    default_cause = "teacher"


class ContextLengthError(TeacherError):
    """The conversation exceeds the model's context window (vLLM answers HTTP 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=False, cause="context")  # a stop reason, not a server fault


class RetrievalError(ServiceError):
    """The retrieval server failed or answered something that is not the Search-R1 shape."""

    default_cause = "retrieval"


class ToolServerError(ServiceError):
    """A tool's server (an MCP server) could not be reached, broke its session, or timed out."""

    default_cause = "tool"


class JudgeError(ServiceError):
    """The LLM judge failed, refused a request, or answered without a verdict."""

    default_cause = "judge"


class RolloutError(HfdistillError):
    """A rollout could not finish because the teacher or the retriever failed for good.

    It is recorded in the failures file (with `cause` and the assistant `turn` it reached) and
    retried by the next run; it never stops the run.
    """

    def __init__(self, message: str, *, cause: str, turn: int) -> None:
        super().__init__(message)
        self.cause = cause
        self.turn = turn


class JournalError(HfdistillError):
    """The run directory or its journal cannot be created, read or written."""


class RunLockedError(JournalError):
    """Another process holds the output (and its run); the message names it."""


class HubError(HfdistillError):
    """A Hugging Face Hub operation failed."""


class ClusterError(HfdistillError):
    """The Ray cluster cannot be reached (RAY_ADDRESS) or failed to run the work."""


class ServeError(HfdistillError):
    """A vLLM server hfdistill starts itself could not start: no vLLM, a model that does not load, a GPU out of
    memory. The message names the server's log and quotes its last error line."""

    exit_code = 2


class ServerLostError(HfdistillError):
    """A vLLM server hfdistill started died more often than it may be restarted: the run stopped for it (its
    finished rollouts are recorded, and a rerun resumes)."""


def first_line(e: BaseException) -> str:
    """A foreign exception's message for a one-line error: the first line of its innermost cause
    (libraries wrap the useful message, e.g. datasets around Arrow's), else its type's name."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class Interrupted(HfdistillError):
    """The run was stopped by SIGINT/SIGTERM after recording what had finished."""

    exit_code = 130
