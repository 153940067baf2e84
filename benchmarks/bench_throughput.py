"""How busy does a client keep a teacher server? A benchmark, not a test.

Generates a workload of N questions, starts the simulators (`sim_vllm.py`, `sim_retrieval.py`) as
subprocesses on free ports, runs each client as a subprocess, reads the teacher's `/metrics` before
and after, and prints markdown tables. See benchmarks/README.md for what each number means.

    python benchmarks/bench_throughput.py                      # the default sections
    python benchmarks/bench_throughput.py --only check,baseline --rows 500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow as pa
import pyarrow.parquet as pq
import sim_retrieval
import sim_vllm

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SECTIONS = ("check", "baseline", "hfdistill", "multi", "cpu", "rss", "ablation", "window")
# On request only: `rss` (the 50k-row run takes minutes) and `ablation` (a second slow baseline).
DEFAULT_SECTIONS = ("check", "baseline", "hfdistill", "multi", "cpu")
SEED_ENV = (
    "VLLM_URL",
    "RETRIEVAL_URL",
    "MAX_ASSISTANT_TURNS",
    "MAX_SAMPLES",
    "INPUT_FILE",
    "OUTPUT_FILE",
    "BATCH_SIZE",
    "TEMPERATURE",
    "MAX_TOKENS",
)


@dataclass(frozen=True)
class Client:
    """A client command line: `kind` picks the program, `args` are extra flags."""

    name: str
    kind: str  # "baseline" (benchmarks/seed_baseline.py) or "hfdistill" (python -m hfdistill generate)
    args: tuple[str, ...] = ()
    servers: int = 1  # teacher servers behind the run; VLLM_URL lists them comma-separated
    rows_per_server: bool = False  # scale the workload with the servers: the same load on each


BASELINE = Client("seed baseline (lockstep batches of 16)", "baseline")
HFDISTILL = Client("hfdistill generate (defaults)", "hfdistill")

# Adding a configuration is one line: (section, Client(...)).
CONFIGS: tuple[tuple[str, Client], ...] = (
    ("baseline", BASELINE),
    ("ablation", Client("seed baseline, searches off the event loop", "baseline", ("--retrieval_in_thread",))),
    ("hfdistill", HFDISTILL),
    ("hfdistill", Client("hfdistill --tool-call-mode text", "hfdistill", ("--tool-call-mode", "text"))),
    ("multi", Client("hfdistill generate, 2 servers", "hfdistill", servers=2)),
    ("multi", Client("hfdistill generate, 2 servers, 2x the questions", "hfdistill", servers=2,
                     rows_per_server=True)),
    ("multi", Client("hfdistill generate, 4 servers, 4x the questions", "hfdistill", servers=4,
                     rows_per_server=True)),
    ("window", Client("hfdistill --concurrency 128", "hfdistill", ("--concurrency", "128"))),
    ("window", Client("hfdistill --concurrency 256", "hfdistill", ("--concurrency", "256"))),
    ("window", Client("hfdistill --concurrency 1024", "hfdistill", ("--concurrency", "1024"))),
    ("cpu", BASELINE),
    ("cpu", HFDISTILL),
    ("rss", HFDISTILL),
)


@dataclass(frozen=True)
class Setup:
    """Simulator settings for one section."""

    slots: int
    prefill: float
    prefill_per_1k: float
    tpot: float
    retrieval_latency: float

    def vllm_args(self) -> list[str]:
        flags = {
            "--slots": self.slots,
            "--prefill": self.prefill,
            "--prefill-per-1k": self.prefill_per_1k,
            "--tpot": self.tpot,
        }
        return [item for flag, value in flags.items() for item in (flag, str(value))]


ZERO_LATENCY = Setup(slots=0, prefill=0, prefill_per_1k=0, tpot=0, retrieval_latency=0)


@dataclass
class Measurement:
    name: str
    rows: int
    returncode: int
    wall: float
    cpu: float  # client user + sys seconds, its children included
    max_rss_mb: float
    rows_out: int | None
    calls: int  # teacher requests served during the run, all servers
    busy: list[float]  # busy slot-seconds per teacher server
    slots: int
    sim_cpu: float = 0.0  # all simulators of the run, their start-up included
    span: float = 0.0  # first teacher request to last teacher response: the wall without client start-up
    startup_cpu: float | None = None
    log: str = ""

    @property
    def lower_bound(self) -> float:
        return sum(self.busy) / (self.slots * len(self.busy)) if self.slots else 0.0

    def active_utilisation(self) -> float:
        return sum(self.busy) / (self.slots * len(self.busy) * self.span) if self.slots and self.span else 0.0

    def utilisation(self, server: int | None = None) -> float:
        if not self.slots or not self.wall:
            return 0.0
        busy = sum(self.busy) / len(self.busy) if server is None else self.busy[server]
        return busy / (self.slots * self.wall)


# --------------------------------------------------------------------------- processes


class Server:
    """A simulator subprocess; its port comes from the first line it prints."""

    def __init__(self, script: str, args: list[str], log: Path, python: str) -> None:
        self._log = log.open("w")
        self.cpu: float | None = None
        argv = [python, str(BENCH / script), "--port", "0", *args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        match = re.search(r"http://[\d.]+:(\d+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"{script} did not start (printed {line!r}); see {log}")
        self.base = f"http://127.0.0.1:{match.group(1)}"

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            return json.load(response)

    def stop(self) -> None:
        """Stop the simulator and keep its CPU seconds (from wait4, like the client's)."""
        if self.cpu is not None:
            return
        self.proc.terminate()
        deadline = time.monotonic() + 10
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        while not pid:
            if time.monotonic() > deadline:
                self.proc.kill()
            time.sleep(0.02)
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu = usage.ru_utime + usage.ru_stime
        self._log.close()


@contextlib.contextmanager
def servers(setup: Setup, count: int, workdir: Path, python: str) -> Iterator[tuple[list[Server], Server]]:
    """`count` teacher simulators and one retrieval simulator, stopped on exit."""
    started: list[Server] = []
    try:
        retrieval_args = ["--latency", str(setup.retrieval_latency)]
        started.append(Server("sim_retrieval.py", retrieval_args, workdir / "retrieval.log", python))
        for i in range(count):
            started.append(Server("sim_vllm.py", setup.vllm_args(), workdir / f"vllm{i}.log", python))
        yield started[1:], started[0]
    finally:
        for server in started:
            server.stop()


@dataclass
class ProcResult:
    returncode: int
    wall: float
    cpu: float
    max_rss_mb: float


def run_measured(argv: list[str], env: dict[str, str], cwd: Path, log: Path, timeout: float) -> ProcResult:
    """Run a child and take its own rusage from wait4, so no other process's CPU is counted."""
    with log.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux.
    return ProcResult(proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def client_argv(client: Client, python: str) -> list[str]:
    if client.kind == "baseline":
        return [python, str(BENCH / "seed_baseline.py"), *client.args]
    return [python, "-m", "hfdistill", "generate", *client.args]


def client_env(workdir: Path, urls: list[str], retrieval: str, input_file: Path, output: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SEED_ENV}
    env.update(
        VLLM_URL=",".join(f"{u}/v1" for u in urls),
        RETRIEVAL_URL=f"{retrieval}/retrieve",
        INPUT_FILE=str(input_file),
        OUTPUT_FILE=str(output),
        MAX_ASSISTANT_TURNS="10",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        # A private cache per run: no datasets cache hit or journal resume can skip work.
        HF_HOME=str(workdir / "hf"),
        XDG_CACHE_HOME=str(workdir / "cache"),
        HF_HUB_OFFLINE="1",
    )
    return env


def hfdistill_missing(python: str) -> str | None:
    """Why hfdistill cannot run here, or None when `import hfdistill.cli.main` works."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    probe = subprocess.run([python, "-c", "import hfdistill.cli.main"], env=env, capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    return (probe.stderr.strip().splitlines() or ["import failed"])[-1]


# --------------------------------------------------------------------------- one measured run


def measure(client: Client, setup: Setup, input_file: Path, rows: int, args: argparse.Namespace) -> Measurement:
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    output = workdir / "distilled.parquet"
    print(f"... {client.name}: {rows} rows, {client.servers} server(s), logs in {workdir}", file=sys.stderr)
    with servers(setup, client.servers, workdir, args.python) as (teachers, retrieval):
        before = [t.get("/metrics") for t in teachers]
        env = client_env(workdir, [t.base for t in teachers], retrieval.base, input_file, output)
        result = run_measured(client_argv(client, args.python), env, workdir, workdir / "client.log", args.timeout)
        after = [t.get("/metrics") for t in teachers]
    sim_cpu = sum(server.cpu or 0.0 for server in [*teachers, retrieval])
    busy = [a["busy_slot_seconds"] - b["busy_slot_seconds"] for a, b in zip(after, before, strict=True)]
    calls = sum(a["requests"] - b["requests"] for a, b in zip(after, before, strict=True))
    rows_out = pq.read_metadata(output).num_rows if output.exists() else None
    m = Measurement(
        client.name,
        rows,
        result.returncode,
        result.wall,
        result.cpu,
        result.max_rss_mb,
        rows_out,
        calls,
        busy,
        setup.slots,
        sim_cpu=sim_cpu,
        span=_active_span(after),
        log=str(workdir / "client.log"),
    )
    _report_failure(m)
    print(f"    done in {m.wall:.1f}s, exit {m.returncode}, {calls} teacher calls", file=sys.stderr)
    return m


def _active_span(metrics: list[dict[str, Any]], start: str = "first_request_at") -> float:
    """From the first request (or, with start="first_work_at", the first past the start-up probes) to
    the last response, over all servers."""
    starts = [m[start] for m in metrics if m[start]]
    ends = [m["last_response_at"] for m in metrics if m["last_response_at"]]
    return max(ends) - min(starts) if starts and ends else 0.0


def _report_failure(m: Measurement) -> None:
    if m.returncode == 0 and m.rows_out is not None:
        return
    tail = Path(m.log).read_text(errors="replace").splitlines()[-15:]
    print(f"!!! {m.name} exited {m.returncode}; last lines of {m.log}:", file=sys.stderr)
    print("\n".join("    " + line for line in tail), file=sys.stderr)


# What each client imports before its first request: the fixed cost of a run, whatever its size.
STARTUP_IMPORTS = {
    "hfdistill": "import hfdistill.cli.main, hfdistill.commands.generate, hfdistill.publish.card",
    "baseline": "import openai, requests, pandas, pyarrow.parquet",
}


def startup_cpu(client: Client, args: argparse.Namespace) -> float:
    """CPU of starting the interpreter and importing what the client imports, to separate the
    fixed cost of a run from its per-call cost."""
    workdir = Path(tempfile.mkdtemp(prefix="startup-", dir=args.workdir))
    env = client_env(workdir, [], "", workdir / "none.parquet", workdir / "none-out.parquet")
    argv = [args.python, "-c", STARTUP_IMPORTS[client.kind]]
    return run_measured(argv, env, workdir, workdir / "client.log", args.timeout).cpu


# --------------------------------------------------------------------------- workload and tables


def write_workload(path: Path, rows: int) -> Path:
    if not path.exists():
        questions = [sim_vllm.make_question(i) for i in range(rows)]
        golden = [[sim_vllm.golden_answer_for(sim_vllm.question_key(q))] for q in questions]
        pq.write_table(pa.table({"question": questions, "golden_answers": golden}), path)
    return path


def _utilisation(m: Measurement) -> str:
    text = f"{m.utilisation():.3f}"
    if len(m.busy) > 1:  # several servers: the mean, then each server
        text += " (" + ", ".join(f"{m.utilisation(i):.3f}" for i in range(len(m.busy))) + ")"
    return text


def _per_call_ms(m: Measurement, net: bool) -> str:
    cpu = m.cpu - (m.startup_cpu or 0.0) if net else m.cpu
    return f"{1000 * cpu / max(1, m.calls):.3f}"


Column = tuple[str, Callable[[Measurement], str]]
NAME: Column = ("configuration", lambda m: m.name + ("" if m.returncode == 0 else f" (exit {m.returncode})"))
THROUGHPUT_COLUMNS: tuple[Column, ...] = (
    NAME,
    ("rows out", lambda m: str(m.rows_out)),
    ("teacher calls", lambda m: str(m.calls)),
    ("wall (s)", lambda m: f"{m.wall:.1f}"),
    ("busy (slot-s)", lambda m: f"{sum(m.busy):.1f}"),
    ("lower bound (s)", lambda m: f"{m.lower_bound:.1f}"),
    ("utilisation", _utilisation),
    ("utilisation while active", lambda m: f"{m.active_utilisation():.3f}"),
    ("wall / LB", lambda m: f"{m.wall / m.lower_bound:.2f}" if m.lower_bound else "-"),
    ("client CPU (s)", lambda m: f"{m.cpu:.1f}"),
    # Whole process, start-up included: against servers that answer at their own pace, the loop wakes
    # for a few replies at a time, so this is above the zero-latency figure of the cpu section.
    ("client CPU / call (ms)", lambda m: _per_call_ms(m, net=False)),
    ("simulators CPU (s)", lambda m: f"{m.sim_cpu:.1f}"),
)
CPU_COLUMNS: tuple[Column, ...] = (
    NAME,
    ("teacher calls", lambda m: str(m.calls)),
    ("client CPU (s)", lambda m: f"{m.cpu:.2f}"),
    ("startup CPU (s)", lambda m: f"{m.startup_cpu or 0.0:.2f}"),
    ("CPU / call (ms)", lambda m: _per_call_ms(m, net=False)),
    ("CPU / call net of startup (ms)", lambda m: _per_call_ms(m, net=True)),
    ("wall (s)", lambda m: f"{m.wall:.1f}"),
    ("simulators CPU (s)", lambda m: f"{m.sim_cpu:.1f}"),
)
RSS_COLUMNS: tuple[Column, ...] = (
    NAME,
    ("rows", lambda m: str(m.rows)),
    ("rows out", lambda m: str(m.rows_out)),
    ("teacher calls", lambda m: str(m.calls)),
    ("wall (s)", lambda m: f"{m.wall:.1f}"),
    ("client CPU (s)", lambda m: f"{m.cpu:.1f}"),
    ("peak RSS (MB)", lambda m: f"{m.max_rss_mb:.0f}"),
)


def render(columns: tuple[Column, ...], results: list[Measurement]) -> str:
    """A markdown table, one row per measurement."""
    lines = ["| " + " | ".join(title for title, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(m) for _, cell in columns) + " |" for m in results]
    return "\n".join(lines)


# --------------------------------------------------------------------------- sections


async def _check_retrieval() -> list[str]:
    runner, port = await sim_retrieval.start(sim_retrieval.RetrievalConfig(latency=0.02))
    url, failures = f"http://127.0.0.1:{port}/retrieve", []
    try:
        async with aiohttp.ClientSession() as session:
            good = {"queries": ["a", "b"], "topk": 3, "return_scores": True}
            async with session.post(url, json=good) as r:
                result = (await r.json())["result"]
                if r.status != 200 or [len(x) for x in result] != [3, 3] or "score" not in result[0][0]:
                    failures.append(f"retrieval: unexpected answer {r.status} {result!r:.200}")
            async with session.post(url, json={"query_list": ["a"]}) as r:
                if r.status != 422:
                    failures.append(f"retrieval: the seed's payload got {r.status}, expected 422")
    finally:
        await runner.cleanup()
    return failures


def section_check(args: argparse.Namespace) -> bool:
    print("## Simulator self-check\n")
    failures = asyncio.run(sim_vllm.self_check()) + asyncio.run(_check_retrieval())
    print("\n".join(f"- FAIL {f}" for f in failures) or "\nslot accounting, protocol and retrieval checks passed")
    return not failures


def section_runs(section: str, setup: Setup, rows: int, args: argparse.Namespace, skip: str | None) -> list:
    results = []
    for name, client in CONFIGS:
        if name != section:
            continue
        if client.kind == "hfdistill" and skip:
            print(f"> skipped `{client.name}`: hfdistill is not importable ({skip})\n")
            continue
        n = rows * client.servers if client.rows_per_server else rows
        input_file = write_workload(Path(args.workdir) / f"workload-{n}.parquet", n)
        m = measure(client, setup, input_file, n, args)
        if section == "cpu":
            m.startup_cpu = startup_cpu(client, args)
        results.append(m)
    return results


def print_header(args: argparse.Namespace, setup: Setup) -> None:
    keys = (sim_vllm.question_key(sim_vllm.make_question(i)) for i in range(args.rows))
    stats = sim_vllm.workload_stats(keys, sim_vllm.SimConfig(prefill=setup.prefill, tpot=setup.tpot))
    print("# Teacher-server utilisation benchmark\n")
    print(
        f"- workload: {args.rows} questions, {stats['teacher_calls']} teacher calls, searches per question "
        f"mean {stats['mean_searches']:.2f}, p90 {stats['p90_searches']}, max {stats['max_searches']}"
    )
    print(
        f"- teacher simulator: {setup.slots} slots, prefill {setup.prefill * 1000:g} ms "
        f"+ {setup.prefill_per_1k * 1000:g} ms per 1k prompt tokens, {setup.tpot * 1000:g} ms per completion "
        f"token ({sim_vllm.MIN_COMPLETION}-{sim_vllm.MAX_COMPLETION} per turn)"
    )
    print(f"- retrieval simulator: {setup.retrieval_latency * 1000:g} ms per request; MAX_ASSISTANT_TURNS=10")
    nominal = stats["nominal_busy_slot_seconds"] / setup.slots
    print(f"- nominal lower bound before prompt-length prefill: {nominal:.1f} s\n")


def run_sections(args: argparse.Namespace) -> dict[str, list[Measurement]]:
    loaded = Setup(args.slots, args.prefill, args.prefill_per_1k, args.tpot, args.retrieval_latency)
    skip = hfdistill_missing(args.python) if set(args.only) - {"check", "baseline", "ablation"} else None
    print_header(args, loaded)
    results: dict[str, list[Measurement]] = {}
    if "check" in args.only and not section_check(args):
        sys.exit(1)
    throughput = [
        m
        for s in ("baseline", "ablation", "hfdistill", "multi", "window")
        if s in args.only
        for m in section_runs(s, loaded, args.rows, args, skip)
    ]
    if throughput:
        results["throughput"] = throughput
        print(f"## Utilisation of {args.slots}-slot teacher server(s)\n\n{render(THROUGHPUT_COLUMNS, throughput)}\n")
    if "cpu" in args.only:
        results["cpu"] = section_runs("cpu", ZERO_LATENCY, args.rows, args, skip)
        print(f"## Client CPU per teacher call (zero-latency servers)\n\n{render(CPU_COLUMNS, results['cpu'])}\n")
    if "rss" in args.only:
        results["rss"] = [m for n in args.rss_rows for m in section_runs("rss", ZERO_LATENCY, n, args, skip)]
        print(f"## Client peak RSS (zero-latency servers)\n\n{render(RSS_COLUMNS, results['rss'])}\n")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2000, help="questions in the workload")
    p.add_argument("--slots", type=int, default=64, help="sequence slots per teacher server")
    p.add_argument("--retrieval-latency", type=float, default=0.02, help="seconds per retrieval request")
    p.add_argument("--tpot", type=float, default=0.0007, help="teacher seconds per completion token")
    p.add_argument("--prefill", type=float, default=0.02, help="teacher seconds per request")
    p.add_argument("--prefill-per-1k", type=float, default=0.0004, help="teacher seconds per 1k prompt tokens")
    p.add_argument("--rss-rows", default="5000,50000", help="row counts for the peak-RSS section")
    p.add_argument("--only", default=",".join(DEFAULT_SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    p.add_argument("--python", default=sys.executable, help="interpreter for clients and simulators")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before a client is killed")
    p.add_argument("--workdir", help="keep workloads, logs and outputs here (default: a temporary dir)")
    p.add_argument("--json", help="also write the measurements to this JSON file")
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        p.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    args.rss_rows = [int(n) for n in args.rss_rows.split(",") if n.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            args.workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="hfdistill-bench-"))
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        results = run_sections(args)
    if args.json:
        dump = {
            k: [asdict(m) | {"lower_bound": m.lower_bound, "utilisation": m.utilisation()} for m in v]
            for k, v in results.items()
        }
        Path(args.json).write_text(json.dumps(dump, indent=2))
    failed = [m.name for ms in results.values() for m in ms if m.returncode != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
