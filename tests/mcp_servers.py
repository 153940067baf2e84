"""Real MCP servers for tests, built with the SDK's server side (mcp 2.x `MCPServer`).

Run as a script it serves over stdio, or over streamable HTTP with `--port`:

    python tests/mcp_servers.py [--name NAME] [--log FILE] [--port PORT [--json-response]]

Tools: `search` over a small corpus, `calculate` (nested JSON arguments), `fail` (a result with isError) and
`crash` (the process exits: a broken session). With `--log`, every call is appended to FILE as a JSON line, so a
test can count what reached the server. `McpHttpServer` runs one in a subprocess on a fixed port, to be
killed and started again.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel

HERE = Path(__file__).resolve()

CORPUS = [
    {"id": "doc-paris", "title": "Paris", "text": "Paris is the capital and largest city of France."},
    {"id": "doc-seine", "title": "Seine", "text": "The Seine flows through Paris into the English Channel."},
    {"id": "doc-berlin", "title": "Berlin", "text": "Berlin is the capital of Germany."},
]


class Quantity(BaseModel):
    value: float
    unit: str = ""


def build(name: str, log: Path | None) -> MCPServer:
    server = MCPServer(name)

    def called(tool: str, arguments: dict[str, Any]) -> None:
        if log is not None:
            with log.open("a") as f:
                f.write(json.dumps({"tool": tool, "arguments": arguments, "pid": os.getpid(),
                                    "parent": os.getppid()}) + "\n")

    @server.tool()
    def search(query: str, topk: int = 2) -> str:
        """Searches the test corpus; one line per document: [i] title: text."""
        called("search", {"query": query, "topk": topk})
        words = set(query.lower().split())
        hits = [d for d in CORPUS if words & set(f"{d['title']} {d['text']}".lower().replace(".", "").split())]
        return "\n".join(f"[{i}] {d['title']}: {d['text']}" for i, d in enumerate(hits[:topk], 1)) or "(no results)"

    @server.tool()
    def calculate(operation: Literal["add", "multiply"], operands: list[Quantity]) -> Quantity:
        """Adds or multiplies quantities; the result keeps the first operand's unit."""
        called("calculate", {"operation": operation, "operands": [o.model_dump() for o in operands]})
        total = 0.0 if operation == "add" else 1.0
        for o in operands:
            total = total + o.value if operation == "add" else total * o.value
        return Quantity(value=total, unit=operands[0].unit if operands else "")

    @server.tool()
    def fail(reason: str) -> str:
        """Always fails, saying why (a tool result with isError)."""
        called("fail", {"reason": reason})
        raise ToolError(f"the lookup failed: {reason}")

    @server.tool()
    def crash() -> str:
        """Ends the server process (its session breaks)."""
        called("crash", {})
        os._exit(3)

    return server


def calls(log: Path) -> list[dict[str, Any]]:
    """The calls a server with `--log log` received, in order."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def stdio_command(name: str, log: Path | None = None) -> str:
    """The `--mcp` command line of a stdio server."""
    return " ".join([sys.executable, str(HERE), "--name", name, *(["--log", str(log)] if log else [])])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class McpHttpServer:
    """A server over streamable HTTP in a subprocess, at a fixed port (so it can be killed and started again)."""

    def __init__(self, name: str, log: Path | None = None, port: int | None = None, *,
                 json_response: bool = False) -> None:
        self.name, self.log, self.port = name, log, port or free_port()
        self.json_response = json_response  # answer each call with one JSON body rather than an event stream
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self, timeout: float = 30.0) -> McpHttpServer:
        args = [sys.executable, str(HERE), "--name", self.name, "--port", str(self.port),
                *(["--json-response"] if self.json_response else [])]
        self.proc = subprocess.Popen([*args, *(["--log", str(self.log)] if self.log else [])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the MCP server exited with {self.proc.returncode}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the MCP server did not listen on port {self.port} within {timeout}s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="testtools")
    parser.add_argument("--log", type=Path)
    parser.add_argument("--port", type=int)
    parser.add_argument("--json-response", action="store_true", help="HTTP: one JSON body per call, not a stream")
    args = parser.parse_args()
    server = build(args.name, args.log)
    if args.port is None:
        server.run()
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.port, json_response=args.json_response)


if __name__ == "__main__":
    main()
