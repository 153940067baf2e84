"""The tools a run offers, as options: the MCP servers to connect to, which tools to offer, and their limits.

Pure values, validated where they enter. A server's identity (what names it in a run's fingerprint, its
record and its card) is its command or its URL, with anything that looks like a secret masked: header
values, `--api-key VALUE`, `TOKEN=VALUE`, credentials in a URL, secret-looking query parameters.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from hfdistill.core.errors import ConfigError

__all__ = ["BUILTIN_TOOLS", "DEFAULT_OPEN_MAX_CHARS", "McpServerSpec", "ToolOptions", "parse_header"]

BUILTIN_TOOLS = ("search", "open")  # the tools hfdistill itself runs (an MCP tool of such a name is prefixed)
DEFAULT_OPEN_MAX_CHARS = 8000  # about 2,000 tokens of a Wikipedia article
_MASK = "***"
_SECRET = re.compile(r"(?i)(api[-_]?key|token|secret|password|passwd|auth|credential)")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)


@dataclass(frozen=True, repr=False)
class McpServerSpec:
    """One MCP server: a command hfdistill starts and talks to over stdio, or a streamable HTTP URL. (Its repr
    masks secrets, as its identity does: a configuration may be logged.)"""

    command: tuple[str, ...] = ()
    url: str | None = None
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # sent with every HTTP request

    def __post_init__(self) -> None:
        if bool(self.command) == (self.url is not None):
            raise ConfigError("an MCP server is a command (--mcp) or a URL (--mcp-url), not both or neither")
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"--mcp-url {self.url!r} is not an http(s) URL; use e.g. http://127.0.0.1:8931/mcp")
        elif self.headers:
            raise ConfigError("--mcp-header applies to --mcp-url servers; a stdio server (--mcp) takes its keys "
                              "on its command line or from `env NAME=VALUE COMMAND`")

    def __repr__(self) -> str:
        return f"McpServerSpec({self.describe()!r})"

    @classmethod
    def stdio(cls, command_line: str) -> McpServerSpec:
        """`--mcp "COMMAND ARGS..."`, split as a shell would (without running one)."""
        try:
            words = tuple(shlex.split(command_line))
        except ValueError as e:
            raise ConfigError(f"--mcp {command_line!r} cannot be split into a command ({e})") from None
        if not words:
            raise ConfigError("--mcp needs a command, e.g. --mcp \"python my_server.py\"")
        return cls(command=words)

    @property
    def transport(self) -> str:
        return "stdio" if self.command else "http"

    def identity(self) -> dict[str, Any]:
        """What names the server in a fingerprint, a record and a card: its command or URL, secrets masked."""
        if self.command:
            return {"command": list(_masked_words(self.command))}
        return {"url": _masked_url(str(self.url))}

    def describe(self) -> str:
        """The server as messages name it (secrets masked)."""
        return " ".join(map(shlex.quote, _masked_words(self.command))) if self.command else _masked_url(str(self.url))


@dataclass(frozen=True)
class ToolOptions:
    """Which tools a run offers and how the ones that do I/O are run."""

    mcp: tuple[McpServerSpec, ...] = ()
    offered: tuple[str, ...] | None = None  # --tools, in the order shown to the model; None: search + every MCP tool
    open_max_chars: int = DEFAULT_OPEN_MAX_CHARS
    mcp_timeout: float = 60.0  # seconds per MCP call (the server's fault past it: retried, then a failure)
    mcp_concurrency: int = 8  # calls in flight per server and event loop

    def __post_init__(self) -> None:
        if self.offered is not None:
            if not self.offered or any(not name for name in self.offered):
                raise ConfigError("--tools needs tool names separated by commas, e.g. --tools search,open")
            doubled = sorted({name for name in self.offered if self.offered.count(name) > 1})
            if doubled:
                raise ConfigError(f"--tools names {', '.join(doubled)} more than once")
        if self.open_max_chars < 1:
            raise ConfigError(f"--open-max-chars must be >= 1, got {self.open_max_chars}")
        if not self.mcp_timeout > 0:
            raise ConfigError(f"--mcp-timeout must be > 0 seconds, got {self.mcp_timeout}")
        if self.mcp_concurrency < 1:
            raise ConfigError(f"--mcp-concurrency must be >= 1, got {self.mcp_concurrency}")

    def offers(self, name: str) -> bool:
        """Whether the tool `name` is offered (by --tools, or by default: search and every MCP tool)."""
        return name in self.offered if self.offered is not None else name != "open"


def parse_header(text: str) -> tuple[str, str]:
    """`--mcp-header "Name: value"` as (name, value)."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    problem = ("the one given has no \":\"" if not sep else f"{name!r} is not a header name"
               if not _HEADER_NAME.fullmatch(name) else f"the header {name!r} has no value" if not value else None)
    if problem is not None:  # (never the value itself: it is usually a key)
        raise ConfigError(f"--mcp-header must read \"Name: value\" (e.g. \"Authorization: Bearer KEY\"); {problem}")
    return name, value


def _masked_words(words: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for i, word in enumerate(words):
        name, eq, _ = word.partition("=")
        if i and words[i - 1].startswith("-") and _SECRET.search(words[i - 1]) and "=" not in words[i - 1]:
            out.append(_MASK)
        elif eq and _SECRET.search(name):
            out.append(f"{name}={_MASK}")
        elif "://" in word:
            out.append(_masked_url(word))
        else:
            out.append(word)
    return out


def _masked_url(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode([(k, _MASK if _SECRET.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
