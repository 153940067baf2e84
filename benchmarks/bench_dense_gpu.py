"""Dense retrieval on one GPU, at wiki-18 scale, in about five minutes: hfdistill's own code paths (the encoder,
the torch searcher and its k-selections, the batcher, the flat-file loader) on random weights and vectors.

    python benchmarks/bench_dense_gpu.py --json /tmp/dense-gpu.json     # on a GPU machine (H200: ~5 min)
    python benchmarks/bench_dense_gpu.py --tiny                         # on CPU at toy sizes (the test runs this)

Needs only torch, transformers, numpy and tqdm (no faiss, no network): run it from the repository root.

1. Index build: passages/s of `Encoder.encode_passages` (tokenizer, batches sorted by length, fp16 model,
   masked mean pooling, normalisation) for e5-base-shaped and all-MiniLM-L6-shaped BERT encoders with random
   weights (`BertConfig`), over passages of ~100-170 tokens like wiki-18's (a made-up vocabulary of whole
   words, so tokens are counted exactly), at two batch sizes.
2. Search: queries/s of `TorchSearcher` over a wiki-18-sized index (21,015,324 x 768, fp16, random unit
   vectors made on the GPU) at batch sizes 1 to 4,096, for each k-selection: `torch.topk` per chunk of 1M rows
   (the baseline), the two-stage group selection at group sizes 256 and 1,024, and at 256 over chunks of 4M;
   and whether each returns the baseline's top-10.
3. Serving: 256 concurrent clients (closed loop, 1-3 queries a request) through the batcher (encode with the
   e5-base-shaped encoder, then search the full index): queries/s, p50 and p99 latency, for the baseline and
   the default selection.
4. Loading: a flat index file (2M x 768 fp32, 5.7 GiB) streamed from disk into fp16 on the GPU by
   `TorchSearcher.from_file`, in a child process: GB/s (the file was just written, so mostly from the page
   cache) and the child's resident memory before and at its peak (the peak must stay near one chunk above
   the start, far below the file's size).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import statistics
import string
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hfdistill.core.encoders import conventions  # noqa: E402
from hfdistill.retrieval.batcher import Batcher  # noqa: E402
from hfdistill.retrieval.encoder import Encoder  # noqa: E402
from hfdistill.retrieval.faiss_file import FlatWriter, read_header  # noqa: E402
from hfdistill.retrieval.knn import TorchSearcher  # noqa: E402

WIKI18 = 21_015_324
SHAPES = {  # BertConfig fields of the real models (random weights are fine for speed)
    "e5-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "all-MiniLM-L6": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
}
TINY_SHAPES = {
    "e5-base": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128},
    "all-MiniLM-L6": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 64},
}
SELECTIONS = {"topk": {"selection": "topk"}, "group-256": {"selection": "group", "group": 256},
              "group-1024": {"selection": "group", "group": 1024},
              "group-256-chunk-4M": {"selection": "group", "group": 256, "chunk_rows": 1 << 22}}


@dataclass
class Sizes:
    """What one run measures; --tiny shrinks everything to seconds on a CPU."""

    device: torch.device
    shapes: dict[str, dict[str, int]]
    passages: int
    index_rows: int
    dim: int
    search_batches: tuple[int, ...]
    serve_seconds: float
    clients: int
    load_rows: int


def sizes(tiny: bool) -> Sizes:
    if tiny:
        return Sizes(torch.device("cpu"), TINY_SHAPES, passages=256, index_rows=50_000, dim=64,
                     search_batches=(1, 16, 64), serve_seconds=2.0, clients=32, load_rows=20_000)
    if not torch.cuda.is_available():
        raise SystemExit("no GPU is visible to torch; run with --tiny for the CPU smoke run")
    return Sizes(torch.device("cuda"), SHAPES, passages=131_072, index_rows=WIKI18, dim=768,
                 search_batches=(1, 16, 64, 256, 512, 1024, 2048, 4096), serve_seconds=15.0, clients=256,
                 load_rows=2_000_000)


# ---------------------------------------------------------------- a tokenizer and text without the network


def make_tokenizer(workdir: Path, vocab_size: int = 30_522) -> tuple[BertTokenizerFast, list[str]]:
    """A WordPiece tokenizer whose vocabulary is whole made-up words: each word of the text is one token."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = ["".join(p) for n in (3, 4) for p in product(string.ascii_lowercase, repeat=n)]
    words = words[:vocab_size - len(special)]
    (workdir / "vocab.txt").write_text("\n".join(special + words) + "\n")
    return BertTokenizerFast(vocab_file=str(workdir / "vocab.txt"), do_lower_case=True), words


def passages_like_wiki18(words: list[str], n: int, rng: random.Random) -> list[str]:
    """A title line and a body, ~100-170 tokens in all (wiki-18's 100-word passages, in WordPiece tokens)."""
    out = []
    for _ in range(n):
        title = " ".join(rng.choices(words, k=rng.randint(1, 4)))
        body = " ".join(rng.choices(words, k=max(60, min(170, int(rng.gauss(135, 20))))))
        out.append(f'"{title}"\n{body}')
    return out


def questions(words: list[str], n: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choices(words, k=rng.randint(5, 14))) for _ in range(n)]


def encoder_of(shape: dict[str, int], tokenizer: BertTokenizerFast, device: torch.device, name: str) -> Encoder:
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, attn_implementation="sdpa", **shape),
                      add_pooling_layer=False)
    model = model.eval().to(device, dtype=torch.float16 if device.type == "cuda" else torch.float32)
    return Encoder(conventions(f"intfloat/{name}" if name.startswith("e5") else name), model, tokenizer, device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- 1. build


def bench_build(s: Sizes, tokenizer: BertTokenizerFast, words: list[str]) -> list[dict[str, Any]]:
    rng = random.Random(1)
    texts = passages_like_wiki18(words, s.passages, rng)
    mean_tokens = statistics.mean(len(ids) for ids in tokenizer(texts[:2000], truncation=True,
                                                               max_length=180)["input_ids"])
    rows = []
    for name, shape in s.shapes.items():
        encoder = encoder_of(shape, tokenizer, s.device, name)
        for batch in (512, 1024) if s.device.type == "cuda" else (32,):
            encoder.encode_passages(texts[:2 * batch], batch)  # warm-up: kernels, allocator
            sync(s.device)
            t0 = time.perf_counter()
            for start in range(0, len(texts), 8192):  # shards, as `hfdistill index` encodes them
                encoder.encode_passages(texts[start:start + 8192], batch)
            sync(s.device)
            rate = len(texts) / (time.perf_counter() - t0)
            rows.append({"encoder": name, "batch": batch, "passages": len(texts), "mean_tokens": round(mean_tokens, 1),
                         "tokenizer_workers": encoder.tokenizer_workers, "passages_per_s": round(rate),
                         "wiki18_minutes": round(WIKI18 / rate / 60, 1)})
            print(f"build {name} batch {batch}: {rate:,.0f} passages/s", file=sys.stderr)
        encoder.close()
        del encoder
        if s.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------- 2. search


def random_index(s: Sizes) -> torch.Tensor:
    dtype = torch.float16 if s.device.type == "cuda" else torch.float32
    vectors = torch.empty((s.index_rows, s.dim), dtype=dtype, device=s.device)
    gen = torch.Generator(device=s.device).manual_seed(2)
    for start in range(0, s.index_rows, 1 << 20):
        chunk = torch.randn((min(1 << 20, s.index_rows - start), s.dim), generator=gen, device=s.device)
        vectors[start:start + len(chunk)] = torch.nn.functional.normalize(chunk, dim=1).to(dtype)
    return vectors


def _time(fn: Any, device: torch.device, reps: int) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_search(s: Sizes, vectors: torch.Tensor) -> list[dict[str, Any]]:
    gen = torch.Generator(device=s.device).manual_seed(3)
    queries = torch.nn.functional.normalize(torch.randn((max(s.search_batches), s.dim), generator=gen,
                                                        device=s.device), dim=1)
    baseline = TorchSearcher(vectors, **SELECTIONS["topk"]).search(queries[:64], 10)[1]
    rows = []
    for name, kwargs in SELECTIONS.items():
        searcher = TorchSearcher(vectors, **kwargs)
        same = np.mean([set(a) == set(b) for a, b in zip(searcher.search(queries[:64], 10)[1], baseline,
                                                          strict=True)])
        for batch in s.search_batches:
            seconds = _time(lambda b=batch, sr=searcher: sr.search(queries[:b], 3), s.device,
                            reps=3 if batch >= 1024 else 5)
            rows.append({"selection": name, "batch": batch, "ms": round(seconds * 1000, 2),
                         "queries_per_s": round(batch / seconds), "same_top10_as_topk": round(float(same), 3)})
            print(f"search {name} batch {batch}: {batch / seconds:,.0f} q/s", file=sys.stderr)
    return rows


# ---------------------------------------------------------------- 3. serving through the batcher


def bench_serving(s: Sizes, vectors: torch.Tensor, tokenizer: BertTokenizerFast, words: list[str]) -> list[dict]:
    encoder = encoder_of(s.shapes["e5-base"], tokenizer, s.device, "e5-base")
    pool = questions(words, 8192, random.Random(4))
    rows = []
    for name in ("topk", "group-1024"):
        searcher = TorchSearcher(vectors, **SELECTIONS[name])

        def work(queries: list[str], k: int, searcher: TorchSearcher = searcher) -> list[list[int]]:
            _, found = searcher.search(encoder.encode_queries(queries), k)
            return found.tolist()

        for max_batch in (512, 1024) if s.device.type == "cuda" else (64,):
            batcher: Batcher[list[int]] = Batcher(work, max_wait_s=0.002, max_queries=max_batch)
            try:
                result = asyncio.run(_closed_loop(batcher, pool, s.clients, s.serve_seconds))
            finally:
                batcher.close()
            result.update(selection=name, max_batch=max_batch, mean_batch=round(batcher.stats.mean_batch, 1))
            rows.append(result)
            print(f"serve {name} max_batch {max_batch}: {result['queries_per_s']:,} q/s, p99 {result['p99_ms']} ms",
                  file=sys.stderr)
    return rows


async def _closed_loop(batcher: Batcher[list[int]], pool: list[str], clients: int, seconds: float) -> dict:
    rng = random.Random(5)
    latencies: list[float] = []
    answered = 0
    stop_at = 0.0

    async def client(measure: bool) -> None:
        nonlocal answered
        while time.perf_counter() < stop_at:
            queries = rng.sample(pool, rng.randint(1, 3))
            t0 = time.perf_counter()
            await batcher.search(queries, 3)
            if measure:
                latencies.append(time.perf_counter() - t0)
                answered += len(queries)

    stop_at = time.perf_counter() + min(3.0, seconds / 3)  # warm-up
    await asyncio.gather(*(client(False) for _ in range(clients)))
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(*(client(True) for _ in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"clients": clients, "queries_per_s": round(answered / wall),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "requests": len(lat)}


# ---------------------------------------------------------------- 4. loading a flat file


def bench_load(s: Sizes, workdir: Path) -> dict[str, Any]:
    path = workdir / "flat.index"
    rng = np.random.default_rng(6)
    blocks = (rng.standard_normal((min(1 << 18, s.load_rows - i), s.dim), dtype=np.float32)
              for i in range(0, s.load_rows, 1 << 18))
    FlatWriter(path, s.dim, s.load_rows).write(blocks)
    done = subprocess.run([sys.executable, __file__, "--load-child", str(path), s.device.type], capture_output=True,
                          text=True, check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    size = read_header(path).size
    path.unlink()
    return {"rows": s.load_rows, "file_gib": round(size / 2**30, 2), "seconds": round(measured["seconds"], 2),
            "gb_per_s": round(size / 1e9 / measured["seconds"], 2), "rss_before_mib": measured["rss_before_mib"],
            "peak_rss_mib": measured["peak_rss_mib"]}


def load_child(path: str, device_type: str) -> None:
    """In a fresh process: resident memory once torch (and the GPU context) is up, then the peak while loading."""
    device = torch.device(device_type)
    torch.empty(1, device=device)
    # The peak from here on, not since the process started: importing torch can peak above what it keeps.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status_mib("VmRSS")
    t0 = time.perf_counter()
    TorchSearcher.from_file(read_header(path), device, torch.float16 if device.type == "cuda" else torch.float32)
    sync(device)
    print(json.dumps({"seconds": time.perf_counter() - t0, "rss_before_mib": before,
                      "peak_rss_mib": _status_mib("VmHWM")}))


def _status_mib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith(f"{field}:"))


# ---------------------------------------------------------------- report


def markdown(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---:|" * len(keys)]
    lines += ["| " + " | ".join(f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k in keys) + " |"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="toy sizes on CPU (seconds)")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: build,search,serve,load")
    parser.add_argument("--load-child", nargs=2, metavar=("FILE", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_child:
        load_child(*args.load_child)
        return
    s = sizes(args.tiny)
    skip = set(filter(None, args.skip.split(",")))
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if s.device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "index_rows": s.index_rows, "dim": s.dim, "failed": []}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tokenizer, words = make_tokenizer(workdir)
        _section(report, args.json, "build", skip, lambda: bench_build(s, tokenizer, words))
        if not {"search", "serve"} <= skip:
            vectors = random_index(s)
            _section(report, args.json, "search", skip, lambda: bench_search(s, vectors))
            _section(report, args.json, "serve", skip, lambda: bench_serving(s, vectors, tokenizer, words))
            del vectors
        if s.device.type == "cuda":
            report["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
            torch.cuda.empty_cache()
        _section(report, args.json, "load", skip, lambda: [bench_load(s, workdir)])
    report["seconds"] = round(time.perf_counter() - t_start)
    report["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    _save(report, args.json)
    print(f"# dense retrieval on {report['device']} (torch {report['torch']}), index {s.index_rows:,} x {s.dim}, "
          f"{report['seconds']} s")
    for section in ("build", "search", "serve", "load"):
        if section in report:
            print(f"\n## {section}\n\n{markdown(report[section])}")
    print(f"\npeak GPU memory: {report.get('peak_gpu_gib', '-')} GiB; peak host memory: {report['peak_rss_mib']} MiB")
    if report["failed"]:
        raise SystemExit(f"sections that failed: {', '.join(report['failed'])} (tracebacks above)")


def _section(report: dict[str, Any], path: Path | None, name: str, skip: set[str], run: Any) -> None:
    """Run one section; a failure is recorded and printed, and the other sections still run (one shot on a GPU
    should bring back all it can). The report is saved after each section, so a timeout keeps what finished."""
    if name in skip:
        return
    try:
        report[name] = run()
    except Exception:  # noqa: BLE001 - recorded, printed, and the exit status says so
        traceback.print_exc()
        report["failed"].append(name)
    _save(report, path)


def _save(report: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        path.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
