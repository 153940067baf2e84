"""The teacher's servers started by hfdistill (`generate --serve`): what it costs, and one server per replica
against vLLM's own data parallelism. A benchmark, not a test.

Sections (`--only`):

- `replicas` (simulated, `sim_vllm.py`): N servers of S slots each through hfdistill's pool (least-outstanding
  routing, a conversation sticking to its server) against one server of N x S slots (a single queue: what vLLM's
  data parallelism behind one server looks like to the client), the same questions and the same window, run
  alternately, twice each. Utilisation is busy slot-seconds over (all slots x wall).
- `startup` (a real vLLM, its CPU build, the tiny scripted model of the `vllm` test tier): `generate --serve DIR`
  against the same run on a server started by hand, alternately. The time from the command to the first
  rollout, split into vLLM's own start (its process spawned -> /health answers) and ours (before the spawn;
  after /health: the probes); the rollouts (first -> the last moment vLLM had a request): wall and vLLM's mean
  running requests (its /metrics, sampled every quarter second); from there to the command's exit (writing the
  output, and for --serve stopping the server); and whether the rows are the same.

    python benchmarks/bench_serve.py                       # both sections (about 8 minutes here)
    python benchmarks/bench_serve.py --only replicas --rows 2000
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_throughput as bt
import pyarrow.parquet as pq

sys.path.insert(0, str(bt.REPO))
from tests.corpus_util import write_jsonl  # the tests' fixtures: the scripted model and its venv
from tests.test_vllm_engine import CORPUS
from tests.vllm_env import ensure_vllm_venv
from tests.vllm_server import FIXTURE_DIR, SERVED_NAME, build_models, start_engine

SECTIONS = ("replicas", "startup")
SCENARIOS = ("search-1", "search-2", "search-3", "answer", "two-calls")
MAX_TOKENS = 96
# The flags `--serve` gives this model (a Qwen3-MoE: the family table), and the fixture's.
TABLE_FLAGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3",
               "--scheduling-policy", "priority")
SERVE_ARGS = f"--enforce-eager --dtype bfloat16 --served-model-name {SERVED_NAME} " \
             "--logits-processors scripted:ScriptedCompletions"


# --------------------------------------------------------------------------- replicas (simulated)


def section_replicas(args: argparse.Namespace) -> str:
    lines = ["## One server per replica through the pool, against one server with all the slots\n",
             f"{args.rows} questions per replica, MAX_ASSISTANT_TURNS=10, {args.slots} slots per replica, the same "
             "--concurrency (512 per replica) in both; each configuration run twice, alternately.\n"]
    for n in args.replicas:
        window = ("--concurrency", str(512 * n))
        pool = bt.Client(f"{n} servers x {args.slots} slots, hfdistill's pool", "hfdistill", window, servers=n)
        single = bt.Client(f"1 server x {n * args.slots} slots (one queue)", "hfdistill", window)
        rows = args.rows * n
        workload = bt.write_workload(Path(args.workdir) / f"workload-{rows}.parquet", rows)
        per_replica = bt.Setup(args.slots, args.prefill, args.prefill_per_1k, args.tpot, args.retrieval_latency)
        one_queue = bt.Setup(args.slots * n, args.prefill, args.prefill_per_1k, args.tpot, args.retrieval_latency)
        results = []
        for _ in range(2):
            results.append(bt.measure(pool, per_replica, workload, rows, args))
            results.append(bt.measure(single, one_queue, workload, rows, args))
        lines.append(bt.render(bt.THROUGHPUT_COLUMNS[:9], results) + "\n")
    return "\n".join(lines)


# --------------------------------------------------------------------------- startup (real vLLM)


@dataclass
class Timeline:
    """One run against a real vLLM: wall-clock times (time.time()) of what happened."""

    name: str
    command: float = 0.0
    spawn: float | None = None  # the vLLM API server's process started (from /proc)
    ready: float | None = None  # its /health answered (polled every 0.1 s)
    first: float = 0.0  # the first rollout's prompt reached the model (the scripted model's log)
    end: float = 0.0  # the command ended
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (time, running, waiting) in vLLM
    code: int = 0
    output: Path | None = None

    @property
    def last(self) -> float:
        """The last moment vLLM had a request (running or waiting), to the sampling's quarter second."""
        return max((t for t, running, waiting in self.samples if running + waiting), default=self.end)

    def cells(self) -> list[str]:
        to_first = self.first - self.command
        vllm = (self.ready - self.spawn) if self.ready and self.spawn else None
        before = (self.spawn - self.command) if self.spawn else None
        after = (self.first - self.ready) if self.ready else to_first
        active = [running for t, running, _ in self.samples if self.first <= t <= self.last]
        mean = sum(active) / len(active) if active else 0.0
        show = [f"{x:.1f}" if x is not None else "-" for x in (to_first, vllm, before, after)]
        return [self.name, *show, f"{self.last - self.first:.1f}", f"{mean:.1f}", f"{self.end - self.last:.1f}",
                str(self.code)]


def _process_start(pid: int) -> float:
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _api_server(model: Path) -> tuple[int, int] | None:
    """(pid, port) of the vLLM API server of `model`, when it runs."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
            if argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and str(model) in argv:
                return int(entry), int(argv[argv.index("--port") + 1])
    return None


def _get(url: str, timeout: float = 1.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()
    except OSError:
        return None


_GAUGE = r"^vllm:num_requests_{}\{{[^}}]*\}} ([\d.]+)"
_RUNNING, _WAITING = (re.compile(_GAUGE.format(name), re.MULTILINE) for name in ("running", "waiting"))


class _Watcher(threading.Thread):
    """Follows one run: the API server's spawn and readiness (for --serve), then vLLM's running requests."""

    def __init__(self, timeline: Timeline, model: Path, base: str | None) -> None:
        super().__init__(daemon=True)
        self.timeline, self.model, self.base = timeline, model, base
        self.done = threading.Event()

    def run(self) -> None:
        while self.base is None and not self.done.is_set():
            found = _api_server(self.model)
            if found is not None:
                self.timeline.spawn = _process_start(found[0])
                self.base = f"http://127.0.0.1:{found[1]}"
            time.sleep(0.05)
        while self.timeline.spawn is not None and self.timeline.ready is None and not self.done.is_set():
            if _get(f"{self.base}/health", 0.5) is not None:
                self.timeline.ready = time.time()
            time.sleep(0.1)
        while not self.done.wait(0.25):
            text = _get(f"{self.base}/metrics") or ""
            running, waiting = _RUNNING.search(text), _WAITING.search(text)
            if running and waiting:
                self.timeline.samples.append((time.time(), float(running.group(1)), float(waiting.group(1))))


def _run(name: str, model: Path, work: Path, env: dict[str, str], extra: list[str], base: str | None) -> Timeline:
    prompts = Path(env["SCRIPT_PROMPT_LOG"])
    prompts.unlink(missing_ok=True)
    out = work / f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.parquet"
    timeline = Timeline(name, output=out)
    watcher = _Watcher(timeline, model, base)
    argv = [sys.executable, "-m", "hfdistill", "generate", "--input_file", str(work / "in.jsonl"), "--corpus",
            str(work / "corpus.jsonl"), "--output_file", str(out), "--temperature", "0", "--max_tokens",
            str(MAX_TOKENS), "--max_assistant_turns", "4", "-q", *extra]
    timeline.command = time.time()
    watcher.start()
    done = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, check=False)
    timeline.end = time.time()
    watcher.done.set()
    watcher.join()
    timeline.code = done.returncode
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr)
    seen = [json.loads(line) for line in prompts.read_text().splitlines()] if prompts.exists() else []
    timeline.first = min((p["t"] for p in seen if p["scenario"]), default=timeline.end)
    return timeline


def _comparable(path: Path) -> list[dict[str, Any]]:
    rows = sorted(pq.read_table(path).to_pylist(), key=lambda r: r["input_index"])
    for row in rows:
        for m in row["messages"]:
            m.pop("tool_call_id", None)
            for call in m.get("tool_calls") or []:
                call.pop("id", None)
    return rows


def section_startup(args: argparse.Namespace) -> str:
    python = ensure_vllm_venv()
    work = Path(tempfile.mkdtemp(prefix="serve-", dir=args.workdir))
    model = build_models(python, work / "models")["moe"]
    write_jsonl(work / "corpus.jsonl", CORPUS)
    questions = [f"[{s}] Question {i}?" for i, s in zip(range(args.startup_rows), itertools.cycle(SCENARIOS))]
    write_jsonl(work / "in.jsonl", [{"question": q, "golden_answers": ["Paris"]} for q in questions])
    env = {k: v for k, v in os.environ.items() if k not in (*bt.SEED_ENV, "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(FIXTURE_DIR), SCRIPT_PROMPT_LOG=str(work / "prompts.jsonl"), VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_CPU_OMP_THREADS_BIND="nobind", HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    runs: list[Timeline] = []
    starts: list[float] = []
    for round_ in range(1, args.rounds + 1):  # one server at a time: this machine has 2 cores
        runs.append(_run(f"--serve (hfdistill starts vLLM), run {round_}", model, work, env,
                         ["--serve", str(model), "--vllm-python", str(python), "--serve-args", SERVE_ARGS], None))
        started = time.time()
        engine = start_engine(python, model, work / f"by-hand-{round_}", (*TABLE_FLAGS, "--max-model-len", "4096"))
        starts.append(time.time() - started)
        try:
            runs.append(_run(f"by hand (vLLM started by hand), run {round_}", model, work,
                             {**env, "SCRIPT_PROMPT_LOG": str(engine.prompt_log)}, ["--vllm_url", f"{engine.url}/v1"],
                             engine.url))
        finally:
            engine.stop()
    reference = _comparable(runs[1].output) if runs[1].output else None
    same = all(r.output is not None and _comparable(r.output) == reference for r in runs)
    head = ["run", "command -> first rollout (s)", "of which vLLM's start (s)", "ours before the spawn (s)",
            "ours after /health (s)", "rollouts: first -> last request done (s)", "vLLM running requests (mean)",
            "last request -> exit (s)", "exit"]
    table = bt.render(tuple((h, lambda t, i=i: t.cells()[i]) for i, h in enumerate(head)), runs)
    return (f"## generate --serve against a server started by hand (a real vLLM 0.32, CPU build)\n\n"
            f"{args.startup_rows} questions of the scripted scenarios {', '.join(SCENARIOS)}; tiny Qwen3-MoE, "
            f"--max_tokens {MAX_TOKENS}; alternately, one server at a time. The servers started by hand took "
            f"{', '.join(f'{t:.1f}' for t in starts)}s to answer (not in their rows).\n\n{table}\n\n"
            f"every run's rows the same (tool-call ids aside, which vLLM draws at random): {same}\n")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    p.add_argument("--rows", type=int, default=1000, help="replicas: questions per replica")
    p.add_argument("--replicas", default="2,4", help="replicas: the numbers of replicas compared")
    p.add_argument("--slots", type=int, default=64, help="replicas: sequence slots per replica")
    p.add_argument("--retrieval-latency", type=float, default=0.02)
    p.add_argument("--tpot", type=float, default=0.0007)
    p.add_argument("--prefill", type=float, default=0.02)
    p.add_argument("--prefill-per-1k", type=float, default=0.0004)
    p.add_argument("--startup-rows", type=int, default=300, help="startup: questions")
    p.add_argument("--rounds", type=int, default=2, help="startup: runs of each kind, alternately")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--workdir", help="keep workloads, logs and outputs here (default: a temporary dir)")
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    args.replicas = [int(n) for n in args.replicas.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            args.workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="hfdistill-bench-serve-"))
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        print("# The teacher's servers, started by hfdistill\n")
        if "replicas" in args.only:
            print(section_replicas(args))
        if "startup" in args.only:
            print(section_startup(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
