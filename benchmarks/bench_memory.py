"""Does a run's memory follow its window or its input? Peak RSS and wall time by input size. A benchmark.

Same machinery as `bench_throughput.py`: zero-latency simulators as subprocesses (so the client is
the whole cost), each client a subprocess in a fresh directory with a private cache, its peak RSS
and CPU from `os.wait4` on that process alone. The input is the real HotpotQA "hard" layout
(`../shared/data/hotpotqa_hard_train/train.parquet`, nested `prompt`, `reward_model`, `extra_info`)
repeated to N *distinct* questions (copy k of a question gets ` [k]` appended wherever the question
appears); without that file, the simulator's own questions in a plain layout.

Sections:
- `sizes`: `hfdistill generate` at each size (default 5k, 50k, 200k): wall, questions/s, peak RSS,
  the ratio of the largest to the smallest size, and bytes per question of the growth.
- `resume`: a run of the largest size killed with SIGKILL once half its rollouts are journaled, then
  the same command again (the resume): its peak RSS and wall, and every rollout exactly once.
- `curate`: `hfdistill curate` of the largest size's output (default options: every row read and written).
- `trace` (on request): one run in-process under `tracemalloc`, sampling RSS, Python's traced
  memory and Arrow's pool, and printing the largest allocation sites (by traceback) at the peak.

Several source trees can run side by side in one invocation (`--tree before=/tmp/old --tree
after=.`): every measurement alternates between them, `--repeat` times.

    python benchmarks/bench_memory.py                                   # sizes, resume, curate (~20 min)
    python benchmarks/bench_memory.py --sizes 5000,50000 --only sizes
    python benchmarks/bench_memory.py --only trace --trace-size 40000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_throughput as bt
import pyarrow as pa
import pyarrow.parquet as pq
import sim_vllm

HOTPOTQA = bt.REPO.parent / "shared" / "data" / "hotpotqa_hard_train" / "train.parquet"
SECTIONS = ("sizes", "resume", "curate", "trace")
DEFAULT_SECTIONS = ("sizes", "resume", "curate")


# --------------------------------------------------------------------------- the input


def write_input(path: Path, n: int) -> Path:
    """`n` distinct questions in the real layout (or the simulator's, without the shared file)."""
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    if not HOTPOTQA.exists():
        questions = [sim_vllm.make_question(i) for i in range(n)]
        golden = [[sim_vllm.golden_answer_for(sim_vllm.question_key(q))] for q in questions]
        pq.write_table(pa.table({"question": questions, "golden_answers": golden}), tmp)
        return tmp.rename(path)
    base = pq.read_table(HOTPOTQA)
    rows = base.to_pylist()
    with pq.ParquetWriter(tmp, base.schema) as writer:
        for copy in range(math.ceil(n / len(rows))):
            block = rows[: n - copy * len(rows)]
            writer.write_table(pa.Table.from_pylist([_distinct(r, copy) for r in block], schema=base.schema))
    return tmp.rename(path)


def _distinct(row: dict[str, Any], copy: int) -> dict[str, Any]:
    """Copy `copy` of a HotpotQA row: its question (everywhere it appears) made distinct from the others."""
    if copy == 0:
        return row
    tag = f" [{copy}]"
    row = json.loads(json.dumps(row))
    extra = row["extra_info"]
    extra["question"] += tag
    extra["interaction_kwargs"]["query"] += tag
    extra["tools_kwargs"]["search"]["create_kwargs"]["question"] += tag
    for message in row["prompt"]:
        if message["role"] == "user":
            message["content"] += tag
    return row


# --------------------------------------------------------------------------- one measured process


@dataclass
class Proc:
    """A finished client: exit status, wall and CPU seconds, peak RSS (wait4) and when it peaked."""

    returncode: int
    wall: float
    cpu: float
    peak_mb: float
    peak_at: float  # seconds after start at which the sampled RSS was highest
    log: Path
    anon_mb: float = 0.0  # at the sampled peak: anonymous memory (heap, Arrow's pool, malloc arenas) ...
    file_mb: float = 0.0  # ... and file pages mapped in (libraries, memory-mapped Arrow files)


def run_client(argv: list[str], env: dict[str, str], cwd: Path, log: Path, *, timeout: float,
               kill_when: Callable[[], bool] | None = None) -> Proc:
    """Run a client; its RSS is sampled from /proc to say when it peaked, and `kill_when` (polled every
    0.2 s) sends it SIGKILL."""
    with log.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        peak = [0, 0.0, 0, 0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                with contextlib.suppress(OSError, ValueError, IndexError, KeyError):
                    status = _status(proc.pid)
                    rss = status["VmRSS"]
                    if rss > peak[0]:
                        peak[:] = [rss, time.perf_counter() - t0, status["RssAnon"], status["RssFile"]]
                if time.perf_counter() - t0 > timeout or (kill_when is not None and kill_when()):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        sampler.join()
        wall = time.perf_counter() - t0
    return Proc(os.waitstatus_to_exitcode(status), wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                peak[1], log, peak[2] / 1024, peak[3] / 1024)


def _status(pid: int) -> dict[str, int]:
    """The kB figures of /proc/PID/status (VmRSS, RssAnon, RssFile, ...)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            out[name] = int(value.split()[0])
    return out


def client_env(tree: Path, workdir: Path, teacher: str, retrieval: str, input_file: Path,
               output: Path) -> dict[str, str]:
    env = bt.client_env(workdir, [teacher], retrieval, input_file, output)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH", "")) if p)
    return env


@contextlib.contextmanager
def simulators(workdir: Path, python: str) -> Iterator[tuple[str, str]]:
    with bt.servers(bt.ZERO_LATENCY, 1, workdir, python) as (teachers, retrieval):
        yield teachers[0].base, retrieval.base


# --------------------------------------------------------------------------- sections


@dataclass
class Row:
    tree: str
    what: str
    questions: int
    proc: Proc
    rows_out: int | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.questions / self.proc.wall if self.proc.wall else 0.0


@dataclass
class Bench:
    args: argparse.Namespace
    trees: dict[str, Path]
    rows: list[Row] = field(default_factory=list)
    outputs: dict[tuple[str, int], Path] = field(default_factory=dict)  # (tree, size) -> a complete output

    def generate(self, tree: str, n: int, *, kill_when: Callable[[Path], bool] | None = None,
                 workdir: Path | None = None) -> tuple[Proc, Path]:
        workdir = workdir or Path(tempfile.mkdtemp(prefix=f"gen-{tree}-{n}-", dir=self.args.workdir))
        input_file = write_input(Path(self.args.workdir) / f"input-{n}.parquet", n)
        output = workdir / "out.parquet"
        argv = [self.args.python, "-m", "hfdistill", "generate", "-q"]
        with simulators(workdir, self.args.python) as (teacher, retrieval):
            env = client_env(self.trees[tree], workdir, teacher, retrieval, input_file, output)
            stop = (lambda: kill_when(workdir)) if kill_when is not None else None
            proc = run_client(argv, env, workdir, workdir / f"client-{int(time.time() * 1000)}.log",
                              timeout=self.args.timeout, kill_when=stop)
        return proc, output

    def tidy(self, output: Path, *, keep_output: bool) -> None:
        """Delete what a measured run left beside its log (journals of gigabytes at 200k questions), and its
        output unless a later section reads it; `--keep-files` keeps everything."""
        if self.args.keep_files:
            return
        for name in (".hfdistill", "hf", "cache"):
            shutil.rmtree(output.parent / name, ignore_errors=True)
        if not keep_output:
            for path in output.parent.glob(f"{output.stem}*"):
                path.unlink(missing_ok=True)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        p = row.proc
        print(f"    {row.tree} {row.what} {row.questions}: exit {p.returncode}, {p.wall:.1f} s, "
              f"peak {p.peak_mb:.0f} MB (at {p.peak_at:.0f} s: {p.anon_mb:.0f} anonymous, {p.file_mb:.0f} file)"
              f"{', ' + row.note if row.note else ''}", file=sys.stderr)
        if p.returncode != 0 and row.what != "killed at half":
            tail = p.log.read_text(errors="replace").splitlines()[-10:]
            print("\n".join("      " + line for line in tail), file=sys.stderr)


def section_sizes(bench: Bench) -> None:
    for n in bench.args.sizes:
        for _ in range(bench.args.repeat):
            for tree in bench.trees:
                print(f"... {tree}: generate {n} questions", file=sys.stderr)
                proc, output = bench.generate(tree, n)
                rows = pq.read_metadata(output).num_rows if output.exists() else None
                bench.add(Row(tree, "generate", n, proc, rows))
                keep = proc.returncode == 0 and n == max(bench.args.sizes) and (tree, n) not in bench.outputs
                if keep:
                    bench.outputs[tree, n] = output
                bench.tidy(output, keep_output=keep)


def section_resume(bench: Bench) -> None:
    n = max(bench.args.sizes)
    for tree in bench.trees:
        print(f"... {tree}: generate {n} questions, SIGKILL at half, then resume", file=sys.stderr)
        workdir = Path(tempfile.mkdtemp(prefix=f"resume-{tree}-{n}-", dir=bench.args.workdir))
        lines = _JournalLines(workdir)
        half = lambda _, lines=lines: lines.count() >= n // 2  # noqa: E731
        killed, _ = bench.generate(tree, n, kill_when=half, workdir=workdir)
        bench.add(Row(tree, "killed at half", n, killed, note=f"{lines.count()} rollouts journaled"))
        resumed, output = bench.generate(tree, n, workdir=workdir)
        keys = _keys(output) if output.exists() else []
        once = len(keys) == len(set(keys)) == n
        bench.add(Row(tree, "resume", n, resumed, len(keys), note="every rollout once" if once else "NOT exactly once"))
        keep = resumed.returncode == 0 and (tree, n) not in bench.outputs
        if keep:
            bench.outputs[tree, n] = output
        bench.tidy(output, keep_output=keep)


class _JournalLines:
    """Lines in a run's journal, read incrementally (the run directory is named by its fingerprint)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.offset, self.lines = workdir, 0, 0

    def count(self) -> int:
        found = list(self.workdir.glob(".hfdistill/out.parquet-*/journal.jsonl"))
        if found:
            with found[0].open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
            complete = chunk.rfind(b"\n") + 1
            self.lines += chunk.count(b"\n", 0, complete)
            self.offset += complete
        return self.lines


def _keys(output: Path) -> list[tuple[int, int]]:
    table = pq.read_table(output, columns=["input_index", "rollout_index"])
    return list(zip(table["input_index"].to_pylist(), table["rollout_index"].to_pylist(), strict=True))


def section_curate(bench: Bench) -> None:
    n = max(bench.args.sizes)
    for tree in bench.trees:
        source = bench.outputs.get((tree, n)) or bench.args.curate_input.get(tree)
        if source is None:
            print(f"> curate skipped for {tree}: no complete output of {n} questions", file=sys.stderr)
            continue
        print(f"... {tree}: curate {source}", file=sys.stderr)
        workdir = Path(tempfile.mkdtemp(prefix=f"curate-{tree}-", dir=bench.args.workdir))
        output = workdir / "curated.parquet"
        env = client_env(bench.trees[tree], workdir, "http://127.0.0.1:9", "http://127.0.0.1:9", source, output)
        argv = [bench.args.python, "-m", "hfdistill", "curate", "-q", str(source), "-o", str(output)]
        proc = run_client(argv, env, workdir, workdir / "client.log", timeout=bench.args.timeout)
        rows = pq.read_metadata(output).num_rows if output.exists() else None
        bench.add(Row(tree, "curate", n, proc, rows))
        bench.tidy(output, keep_output=False)


# --------------------------------------------------------------------------- trace (in-process)

_TRACER = r"""
import ctypes, os, sys, threading, time, tracemalloc
import pyarrow as pa
frames, out = int(os.environ["BENCH_TRACE_FRAMES"]), os.environ["BENCH_TRACE_OUT"]
every = float(os.environ["BENCH_TRACE_EVERY"])
if frames:
    tracemalloc.start(frames)
libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
def status():
    d = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if v.strip().endswith("kB"):
            d[k] = int(v.split()[0]) * 1024
    return d
def reading():
    s, m = status(), libc.mallinfo2()
    traced = tracemalloc.get_traced_memory()[0] if frames else 0
    return (time.perf_counter() - t0, s["VmRSS"], s["RssAnon"], s["RssFile"], traced, sys.getallocatedblocks(),
            pa.total_allocated_bytes(), m.uordblks + m.hblkhd, m.fordblks)
peak = {"rss": 0, "snapshot": None, "at": 0.0, "early": None, "early_at": 0.0}
timeline, done = [], threading.Event()
t0 = time.perf_counter()
def sample():
    while not done.wait(every):
        r = reading()
        timeline.append(r)
        if frames and peak["early"] is None and r[0] > float(os.environ["BENCH_TRACE_WARM"]):
            peak["early"], peak["early_at"] = tracemalloc.take_snapshot(), r[0]
        if r[1] > peak["rss"] * 1.03:
            peak["rss"], peak["at"] = r[1], r[0]
            if frames:
                peak["snapshot"] = tracemalloc.take_snapshot()
threading.Thread(target=sample, daemon=True).start()
from hfdistill.cli.main import main
try:
    code = main(sys.argv[1:])
finally:
    done.set()
    timeline.append(reading())
    before = status()["VmRSS"]
    libc.malloc_trim(0)
    after = status()["VmRSS"]
    with open(out, "w") as f:
        f.write("| t (s) | RSS | anonymous | file | Python traced | Python blocks (k) | Arrow pool | malloc in use "
                "| malloc free |\n|" + "---:|" * 9 + "\n")
        shown = timeline[:: max(1, len(timeline) // 30)] + timeline[-1:]
        for t, rss, anon, file, traced, blocks, arrow, used, free in shown:
            f.write(f"| {t:.0f} | {rss / 1e6:.0f} | {anon / 1e6:.0f} | {file / 1e6:.0f} | {traced / 1e6:.0f} "
                    f"| {blocks / 1e3:.0f} | {arrow / 1e6:.0f} | {used / 1e6:.0f} | {free / 1e6:.0f} |\n")
        f.write(f"\n(MB.) At the end, malloc_trim(0) took RSS from {before / 1e6:.0f} to {after / 1e6:.0f} MB.\n")
        snap = peak["snapshot"]
        if snap is not None:
            snap = snap.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__),
                                       tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")])
            stats = snap.statistics("traceback")
            total = sum(s.size for s in stats)
            f.write(f"\nAt the peak of RSS ({peak['rss'] / 1e6:.0f} MB at {peak['at']:.0f} s), {total / 1e6:.0f} MB of "
                    "Python objects outside imports; the largest sites:\n\n")
            for s in stats[:int(os.environ["BENCH_TRACE_TOP"])]:
                f.write(f"- {s.size / 1e6:.1f} MB in {s.count} blocks\n")
                for line in s.traceback.format()[-2 * frames:]:
                    f.write("    " + line.rstrip() + "\n")
            if peak["early"] is not None:
                f.write(f"\nWhat grew from {peak['early_at']:.0f} s to the peak:\n\n")
                for d in snap.compare_to(peak["early"], "traceback")[:int(os.environ["BENCH_TRACE_TOP"])]:
                    f.write(f"- {d.size_diff / 1e6:+.1f} MB in {d.count_diff:+d} blocks\n")
                    for line in d.traceback.format()[-2 * frames:]:
                        f.write("    " + line.rstrip() + "\n")
sys.exit(code)
"""


def section_trace(bench: Bench) -> None:
    n = bench.args.trace_size
    for tree, path in bench.trees.items():
        print(f"... {tree}: generate {n} questions under tracemalloc", file=sys.stderr)
        workdir = Path(tempfile.mkdtemp(prefix=f"trace-{tree}-{n}-", dir=bench.args.workdir))
        input_file = write_input(Path(bench.args.workdir) / f"input-{n}.parquet", n)
        report = workdir / "trace.md"
        with simulators(workdir, bench.args.python) as (teacher, retrieval):
            env = client_env(path, workdir, teacher, retrieval, input_file, workdir / "out.parquet")
            env.update(BENCH_TRACE_FRAMES=str(bench.args.trace_frames), BENCH_TRACE_OUT=str(report),
                       BENCH_TRACE_EVERY="1", BENCH_TRACE_TOP="15", BENCH_TRACE_WARM="20")
            proc = run_client([bench.args.python, "-c", _TRACER, "generate", "-q"], env, workdir,
                              workdir / "client.log", timeout=bench.args.timeout)
        print(f"## Trace of `{tree}` at {n} questions (exit {proc.returncode}, peak RSS {proc.peak_mb:.0f} MB)\n")
        print(report.read_text() if report.exists() else "(no report: see " + str(proc.log) + ")")


# --------------------------------------------------------------------------- tables


def render(bench: Bench) -> str:
    lines = ["| tree | run | questions | exit | rows out | wall (s) | questions/s | client CPU (s) | peak RSS (MB) "
             "| of which anonymous / file (MB) | note |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in bench.rows:
        p = r.proc
        out = r.rows_out if r.rows_out is not None else "-"
        lines.append(f"| {r.tree} | {r.what} | {r.questions} | {p.returncode} | {out} | {p.wall:.1f} | {r.rate:.0f} "
                     f"| {p.cpu:.1f} | {p.peak_mb:.0f} | {p.anon_mb:.0f} / {p.file_mb:.0f} | {r.note} |")
    return "\n".join(lines)


def render_growth(bench: Bench) -> str:
    """Per tree: the median peak at each size, the largest over the smallest, and bytes per question."""
    lines = ["| tree | " + " | ".join(f"peak at {n} (MB)" for n in bench.args.sizes) +
             f" | {max(bench.args.sizes)} / {min(bench.args.sizes)} | bytes / question | questions/s at each size |",
             "|---|" + "---:|" * (len(bench.args.sizes) + 3)]
    for tree in bench.trees:
        peaks, rates = {}, {}
        for n in bench.args.sizes:
            runs = [r for r in bench.rows if r.tree == tree and r.what == "generate" and r.questions == n
                    and r.proc.returncode == 0]
            if runs:
                peaks[n] = _median([r.proc.peak_mb for r in runs])
                rates[n] = _median([r.rate for r in runs])
        lo, hi = min(bench.args.sizes), max(bench.args.sizes)
        if lo not in peaks or hi not in peaks or lo == hi:
            continue
        per_q = (peaks[hi] - peaks[lo]) * 2**20 / (hi - lo)
        lines.append(f"| {tree} | " + " | ".join(f"{peaks.get(n, float('nan')):.0f}" for n in bench.args.sizes) +
                     f" | {peaks[hi] / peaks[lo]:.2f}x | {per_q:.0f} | " +
                     ", ".join(f"{rates[n]:.0f}" for n in bench.args.sizes if n in rates) + " |")
    return "\n".join(lines)


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="5000,50000,200000", help="questions per run, comma-separated")
    p.add_argument("--tree", action="append", default=[],
                   help="NAME=PATH of a source tree to measure (repeatable; default: this checkout)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each size and tree (the table shows each)")
    p.add_argument("--only", default=",".join(DEFAULT_SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    p.add_argument("--trace-size", type=int, default=40000, help="questions of the traced run")
    p.add_argument("--trace-frames", type=int, default=0,
                   help="trace: frames kept per allocation by tracemalloc (0: no tracemalloc, RSS and allocators only)")
    p.add_argument("--python", default=sys.executable, help="interpreter for clients and simulators")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before a client is killed")
    p.add_argument("--workdir", help="keep inputs and logs here (default: a temporary dir)")
    p.add_argument("--keep-files", action="store_true", help="keep every run's journal and output too")
    p.add_argument("--curate-input", action="append", default=[],
                   help="TREE=PATH: an output of the largest size for `curate` (when `sizes` does not run)")
    p.add_argument("--json", help="also write the measurements to this JSON file")
    args = p.parse_args(argv)
    args.sizes = sorted(int(n) for n in args.sizes.split(",") if n.strip())
    args.curate_input = dict(spec.split("=", 1) for spec in args.curate_input)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        p.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def trees_of(specs: list[str]) -> dict[str, Path]:
    if not specs:
        return {"this": bt.REPO}
    trees = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        if not path or not (Path(path) / "hfdistill").is_dir():
            raise SystemExit(f"--tree {spec}: expected NAME=PATH of a source tree holding hfdistill/")
        trees[name] = Path(path).resolve()
    return trees


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args, trees_of(args.tree))
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            args.workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="hfdistill-mem-"))
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        layout = "HotpotQA hard layout, repeated distinct" if HOTPOTQA.exists() else "simulator questions"
        print(f"# Memory by input size ({layout}; zero-latency simulators; {os.cpu_count()} CPUs)\n")
        if "sizes" in args.only:
            section_sizes(bench)
        if "resume" in args.only:
            section_resume(bench)
        if "curate" in args.only:
            section_curate(bench)
        if bench.rows:
            print(render(bench) + "\n")
        if "sizes" in args.only and len(args.sizes) > 1:
            print(render_growth(bench) + "\n")
        if "trace" in args.only:
            section_trace(bench)
    if args.json:
        Path(args.json).write_text(json.dumps([{"tree": r.tree, "what": r.what, "questions": r.questions,
                                                "rows_out": r.rows_out, "note": r.note, **vars(r.proc),
                                                "log": str(r.proc.log)} for r in bench.rows], indent=2))
    bad = [r for r in bench.rows if r.proc.returncode != 0 and r.what != "killed at half"]
    return 1 if bad or any("NOT" in r.note for r in bench.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
