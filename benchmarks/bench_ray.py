"""The Ray engine against the local one, and the tail that vLLM request priorities remove. A benchmark.

Same machinery as `bench_throughput.py` (simulators as subprocesses on free ports, the client as a
subprocess measured with wait4, the teacher's `/metrics` before and after), plus a Ray cluster on
loopback started for each Ray configuration (a head, and a second raylet for two nodes; 1 CPU
each, so one actor per node), whose processes' CPU (actors, raylets, GCS) is sampled from /proc
during the run. Every configuration runs in the same invocation, against fresh simulators.

    python benchmarks/bench_ray.py                          # both sections, 5000 questions
    python benchmarks/bench_ray.py --rows 2000 --only util
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bench_throughput as bt

sys.path.insert(0, str(bt.REPO))
from tests.ray_cluster import ENV, Cluster, _processes  # the tests' loopback cluster

SECTIONS = ("util", "cpu")


@dataclass(frozen=True)
class Config:
    name: str
    nodes: int  # 0: the local engine; otherwise a Ray cluster of this many nodes
    args: tuple[str, ...] = ()
    policy: str = "priority"  # the simulator's --scheduling-policy


UTIL = (
    Config("local engine, fcfs server (no priority)", 0, ("--priority", "off"), "fcfs"),
    Config("local engine, priority server", 0),
    Config("ray engine, 1 node (1 actor)", 1, ("--engine", "ray")),
    Config("ray engine, 2 nodes (2 actors)", 2, ("--engine", "ray")),
)
CPU = (Config("local engine", 0), Config("ray engine, 1 node", 1, ("--engine", "ray")),
       Config("ray engine, 2 nodes", 2, ("--engine", "ray")))


@dataclass
class Run:
    config: Config
    m: bt.Measurement
    actor_cpu: float  # CPU seconds of the actors' processes during the run
    ray_cpu: float  # CPU seconds of Ray's own processes during the run (raylets, GCS, agents)
    work_span: float  # the server's first request past the start-up probes to its last response

    @property
    def startup(self) -> float:
        """Seconds between the driver's probe and the first rollout request (Ray and its actors starting)."""
        return self.m.span - self.work_span

    @property
    def tail(self) -> float:
        """Seconds the server served rollouts beyond a perfectly packed schedule (work span - busy / slots)."""
        return self.work_span - self.m.lower_bound

    def work_utilisation(self) -> float:
        return self.m.lower_bound / self.work_span if self.work_span else 0.0

    def per_call_ms(self) -> float:
        """The client's CPU per call: the driver's and the actors' (Ray's own processes are shown apart)."""
        return 1000 * (self.m.cpu + self.actor_cpu) / max(1, self.m.calls)


class CpuSampler:
    """Polls /proc for the CPU of every process of a cluster (and their children) while a run lasts;
    the actors' processes (titled `ray::MapWorker...`) apart from Ray's own (raylets, GCS, agents)."""

    def __init__(self, cluster: Cluster | None) -> None:
        self.cluster = cluster
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.actors: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> CpuSampler:
        if self.cluster is not None:
            self.first = self._sample()
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def seconds(self, actors: bool) -> float:
        return sum(cpu - self.first.get(pid, 0.0) for pid, cpu in self.last.items() if (pid in self.actors) == actors)

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            self.last.update(self._sample())

    def _sample(self) -> dict[int, float]:
        assert self.cluster is not None
        procs = _processes()
        ours = {pid for pid, cmdline, _ in procs if str(self.cluster.temp_dir).encode() in cmdline}
        grown = True
        while grown:
            children = {pid for pid, _, ppid in procs if ppid in ours and pid not in ours}
            ours |= children
            grown = bool(children)
        self.actors |= {pid for pid, cmdline, _ in procs if pid in ours and cmdline.startswith(b"ray::MapWorker")}
        return {pid: cpu for pid in ours if (cpu := _cpu_seconds(pid)) is not None}


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, in clock ticks


@contextlib.contextmanager
def cluster_of(nodes: int) -> Iterator[Cluster | None]:
    if not nodes:
        yield None
        return
    cluster = Cluster()
    try:
        cluster.start()
        for _ in range(nodes - 1):
            cluster.add_node()
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def simulators(setup: bt.Setup, policy: str, workdir: Path, python: str) -> Iterator[tuple[bt.Server, bt.Server]]:
    started: list[bt.Server] = []
    try:
        started.append(bt.Server("sim_retrieval.py", ["--latency", str(setup.retrieval_latency)],
                                 workdir / "retrieval.log", python))
        started.append(bt.Server("sim_vllm.py", [*setup.vllm_args(), "--scheduling-policy", policy],
                                 workdir / "vllm.log", python))
        yield started[1], started[0]
    finally:
        for server in started:
            server.stop()


def measure(config: Config, setup: bt.Setup, workload: Path, rows: int, args: argparse.Namespace) -> Run:
    workdir = Path(tempfile.mkdtemp(prefix="ray-", dir=args.workdir))
    output = workdir / "distilled.parquet"
    print(f"... {config.name}: {rows} rows, logs in {workdir}", file=sys.stderr)
    with cluster_of(config.nodes) as cluster, simulators(setup, config.policy, workdir, args.python) as (vllm, ret):
        env = {**bt.client_env(workdir, [vllm.base], ret.base, workload, output), **_ray_env(cluster)}
        before = vllm.get("/metrics")
        with CpuSampler(cluster) as sampler:
            result = bt.run_measured([args.python, "-m", "hfdistill", "generate", *config.args], env, workdir,
                                     workdir / "client.log", args.timeout)
        after = vllm.get("/metrics")
    m = bt.Measurement(config.name, rows, result.returncode, result.wall, result.cpu, result.max_rss_mb,
                       rows_out=bt.pq.read_metadata(output).num_rows if output.exists() else None,
                       calls=after["requests"] - before["requests"],
                       busy=[after["busy_slot_seconds"] - before["busy_slot_seconds"]], slots=setup.slots,
                       span=bt._active_span([after]), log=str(workdir / "client.log"))
    bt._report_failure(m)
    print(f"    done in {m.wall:.1f}s, exit {m.returncode}, {m.calls} teacher calls", file=sys.stderr)
    return Run(config, m, sampler.seconds(actors=True), sampler.seconds(actors=False),
               work_span=bt._active_span([after], start="first_work_at"))


def _ray_env(cluster: Cluster | None) -> dict[str, str]:
    if cluster is None:
        return {}
    return {"RAY_ADDRESS": cluster.address, "RAY_AUTH_MODE": ENV["RAY_AUTH_MODE"]}


def _actors(run: Run) -> int:
    return max(1, run.config.nodes)


def util_table(runs: list[Run]) -> str:
    lines = ["| configuration | calls | wall (s) | lower bound (s) | utilisation | while active | start-up (s) "
             "| while serving rollouts | tail (s) | calls/s per actor | client CPU / call (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        m = r.m
        per_actor = f"{m.calls / r.work_span / _actors(r):.0f}" if r.config.nodes and r.work_span else "-"
        lines.append(f"| {m.name}{'' if m.returncode == 0 else f' (exit {m.returncode})'} | {m.calls} "
                     f"| {m.wall:.1f} | {m.lower_bound:.1f} | {m.utilisation():.3f} | {m.active_utilisation():.3f} "
                     f"| {r.startup:.1f} | {r.work_utilisation():.3f} | {r.tail:.1f} | {per_actor} "
                     f"| {r.per_call_ms():.3f} |")
    return "\n".join(lines)


def cpu_table(runs: list[Run]) -> str:
    lines = ["| configuration | calls | wall (s) | driver CPU (s) | actors CPU (s) | CPU / call (ms) "
             "| actors CPU / call (ms) | Ray's own processes CPU (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        m = r.m
        actors = f"{1000 * r.actor_cpu / max(1, m.calls):.3f}" if r.config.nodes else "-"
        lines.append(f"| {m.name}{'' if m.returncode == 0 else f' (exit {m.returncode})'} | {m.calls} "
                     f"| {m.wall:.1f} | {m.cpu:.1f} | {r.actor_cpu:.1f} | {r.per_call_ms():.3f} | {actors} "
                     f"| {r.ray_cpu:.1f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=5000, help="questions in the workload")
    p.add_argument("--slots", type=int, default=64, help="sequence slots of the teacher server")
    p.add_argument("--tpot", type=float, default=0.0007, help="teacher seconds per completion token")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--workdir", help="keep workloads, logs and outputs here (default: a temporary dir)")
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            args.workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="hfdistill-bench-ray-"))
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        workload = bt.write_workload(Path(args.workdir) / f"workload-{args.rows}.parquet", args.rows)
        failed = False
        if "util" in args.only:
            setup = bt.Setup(args.slots, 0.02, 0.0004, args.tpot, 0.02)
            runs = [measure(c, setup, workload, args.rows, args) for c in UTIL]
            print(f"## {args.rows} questions, one {args.slots}-slot teacher, 20 ms retrieval\n\n{util_table(runs)}\n")
            failed |= any(r.m.returncode for r in runs)
        if "cpu" in args.only:
            runs = [measure(c, bt.ZERO_LATENCY, workload, args.rows, args) for c in CPU]
            print(f"## Client CPU per teacher call, zero-latency servers, {args.rows} questions\n\n{cpu_table(runs)}\n")
            failed |= any(r.m.returncode for r in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
