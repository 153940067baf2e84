"""The benchmark's simulated vLLM and retrieval servers, run as processes on loopback for the tests that
need a teacher at scale (resume after kill -9, the Ray engine)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

__all__ = ["BENCHMARKS", "serve", "simulators", "teacher_calls"]


def serve(script: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start `benchmarks/<script>` on a free port; returns the process and the URL it prints."""
    proc = subprocess.Popen([sys.executable, str(BENCHMARKS / script), "--port", "0", *args],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "<name> listening on http://127.0.0.1:PORT[/retrieve]"
    return proc, line.split(" listening on ")[1].split()[0]


@contextlib.contextmanager
def simulators(*vllm_args: str) -> Iterator[tuple[str, str]]:
    """(the simulated vLLM's base URL, the retrieval URL), both stopped on exit."""
    vllm, vllm_url = serve("sim_vllm.py", *vllm_args)
    retrieval, retrieval_url = serve("sim_retrieval.py")
    try:
        yield vllm_url, retrieval_url
    finally:
        for proc in (vllm, retrieval):
            proc.terminate()
            proc.wait(10)


def teacher_calls(vllm_url: str) -> int:
    """Chat requests the simulated vLLM has received so far."""
    with urllib.request.urlopen(f"{vllm_url}/metrics", timeout=10) as response:
        return int(json.load(response)["requests"])
