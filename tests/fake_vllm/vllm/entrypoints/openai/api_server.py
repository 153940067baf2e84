"""A stand-in for `python -m vllm.entrypoints.openai.api_server` in the fast tests of `--serve` (a test fixture).

With this directory and the repository on PYTHONPATH, `--vllm-python` set to the test's own python starts this
instead of vLLM: it takes vLLM's command line, serves the scripted `tests.fakes.FakeTeacher` on --host/--port
(plus vLLM's `/health`), and, like vLLM's API server, starts a child process of its own (the "engine core"),
which lives on if this process alone is killed. Environment (set by the test):

    FAKE_VLLM_RECORD   a JSONL file: one line per start (argv, pid, the child's pid, CUDA_VISIBLE_DEVICES),
                       and one per chat request of a rollout (its question and turn)
    FAKE_VLLM_FAIL     fail to start: log a vLLM-like traceback ending in this line, exit 1
    FAKE_VLLM_DELAY    seconds before it listens (a model loading); FAKE_VLLM_SLOW seconds per completion
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from aiohttp import web

from tests.fakes import FakeTeacher, TeacherBehaviour


def _record(entry: dict[str, Any]) -> None:
    path = os.environ.get("FAKE_VLLM_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def _fail(message: str) -> int:
    pid = os.getpid()
    print(f"(APIServer pid={pid}) INFO 01-01 00:00:00 [api_utils.py:1] loading the model", flush=True)
    print(f"(EngineCore pid={pid + 1}) ERROR 01-01 00:00:01 [core.py:1] EngineCore failed to start.", flush=True)
    print("Traceback (most recent call last):\n  File \"core.py\", line 1, in run_engine_core", flush=True)
    print(message, flush=True)
    print("RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}", flush=True)
    return 1


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--served-model-name")
    args, _ = p.parse_known_args()
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])  # the "engine core"
    _record({"start": sys.argv[1:], "pid": os.getpid(), "engine_pid": engine.pid,
             "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")})
    if os.environ.get("FAKE_VLLM_FAIL"):
        return _fail(os.environ["FAKE_VLLM_FAIL"])
    time.sleep(float(os.environ.get("FAKE_VLLM_DELAY", "0")))
    teacher = FakeTeacher(TeacherBehaviour(stable=True, delay=float(os.environ.get("FAKE_VLLM_SLOW", "0"))),
                          model=args.served_model_name or args.model)
    teacher.on_request = lambda body: _record({"chat": _question(body), "turn": _turn(body)})
    app = teacher.app()

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="")

    app.router.add_get("/health", health)
    print(f"INFO Starting vLLM server on http://{args.host}:{args.port}", flush=True)
    asyncio.run(_serve(app, args.host, args.port))
    return 0


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    await asyncio.Event().wait()


def _question(body: dict[str, Any]) -> str:
    return next((m["content"] for m in body["messages"] if m.get("role") == "user"), "")


def _turn(body: dict[str, Any]) -> int:
    return sum(m.get("role") == "assistant" for m in body["messages"])


if __name__ == "__main__":
    raise SystemExit(main())
