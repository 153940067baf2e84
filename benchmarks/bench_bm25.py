"""Benchmark the embedded BM25 retriever on synthetic Search-R1 corpora.

    python benchmarks/bench_bm25.py                       # 100k and 1M passages
    python benchmarks/bench_bm25.py --sizes 100000 --workdir /tmp/bm25bench

Each size runs in two fresh subprocesses (build, then load + query) so peak memory is per step.
The corpus has Zipfian word frequencies (English function words at the head, so stopword removal
bites as in real text), ~100 words per passage and a title line. Planted passages each hold one
unique rare token; ranking sanity is the share of them that come top 1 for a query with that token.
Prints a markdown table, then the query scorer variants side by side on the largest size.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bm25s
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hfdistill.retrieval import bm25, bm25_index

SEED = 1234
VOCAB_SIZE = 300_000
ZIPF_S, ZIPF_Q = 1.0, 2.7  # Zipf-Mandelbrot: p(rank) ~ 1 / (rank + q) ** s
PLANTED = 200
BATCHES = 200
FUNCTION_WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "the of and in to a is was for on as by with he that at from his it an were are which this be or "
    "has had also not first its their one they but have new been who after her two she all other when "
    "there into more during time used only most over up may can some would these between about than "
    "out many under what three where later while such both then before made them through being well "
    "him year no any so could city called known part since became however de born several until each"
).split()


# ---------------------------------------------------------------- corpus


@functools.lru_cache(maxsize=1)
def vocabulary() -> np.ndarray:
    return make_vocabulary(np.random.default_rng(SEED), VOCAB_SIZE)


def make_vocabulary(rng: np.random.Generator, size: int) -> np.ndarray:
    """Function words first, then unique pronounceable made-up words of 2-3 syllables."""
    onsets = [*"bcdfghjklmnprstvwz", "br", "ch", "st", "tr", "sh", "gr", "pl", "th"]
    nuclei = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io"]
    codas = ["", "", "n", "r", "s", "l", "t", "m", "nd", "st"]
    syllables = np.array([o + n + c for o in onsets for n in nuclei for c in codas])
    words, seen = list(FUNCTION_WORDS), set(FUNCTION_WORDS)
    while len(words) < size:
        counts = rng.integers(2, 4, size=size)
        picks = rng.integers(0, len(syllables), size=(size, 4))
        for n, row in zip(counts, picks, strict=True):
            w = "".join(syllables[row[:n]])
            if w not in seen:
                seen.add(w)
                words.append(w)
                if len(words) == size:
                    break
    return np.array(words, dtype=object)


def zipf_probabilities(size: int) -> np.ndarray:
    p = 1.0 / (np.arange(1, size + 1) + ZIPF_Q) ** ZIPF_S
    return p / p.sum()


def write_corpus(path: Path, n: int) -> dict[str, str]:
    """Write `n` passages; returns {planted token: passage id}."""
    rng = np.random.default_rng(SEED)
    vocab = make_vocabulary(rng, VOCAB_SIZE)
    cdf = np.cumsum(zipf_probabilities(VOCAB_SIZE))
    lengths = np.clip(rng.normal(100, 25, size=n).astype(int), 30, 200)
    planted_docs = rng.choice(n, size=min(PLANTED, n), replace=False)
    planted = {f"plantedtok{j:04d}": int(d) for j, d in enumerate(planted_docs)}
    plant_at = {d: tok for tok, d in planted.items()}
    chunk = 20_000
    with path.open("w", encoding="utf-8") as f:
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            ids = np.searchsorted(cdf, rng.random(int(lengths[lo:hi].sum())))
            words = vocab[np.minimum(ids, VOCAB_SIZE - 1)]
            title_ids = rng.integers(2_000, 60_000, size=(hi - lo, 2))
            f.writelines(_passage_lines(lo, words, lengths[lo:hi], vocab[title_ids], plant_at, rng))
    return {tok: str(d) for tok, d in planted.items()}


def _passage_lines(lo, words, lengths, titles, plant_at, rng):
    pos = 0
    for k, length in enumerate(lengths):
        doc = lo + k
        body = list(words[pos : pos + length])
        pos += length
        if doc in plant_at:
            body.insert(int(rng.integers(0, len(body))), plant_at[doc])
        title = " ".join(titles[k]).title()
        text = f"{title} {' '.join(body)}."
        yield json.dumps({"id": str(doc), "contents": f'"{title}"\n{text}'}) + "\n"


def make_queries(n: int, seed: int, max_rank: int = VOCAB_SIZE) -> list[str]:
    """Question-like queries of 4-10 Zipfian words among the `max_rank` most frequent (function words too)."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary()[:max_rank]
    cdf = np.cumsum(zipf_probabilities(max_rank))
    out = []
    for _ in range(n):
        ids = np.searchsorted(cdf, rng.random(int(rng.integers(4, 11))))
        out.append(" ".join(vocab[np.minimum(ids, max_rank - 1)]))
    return out


# ---------------------------------------------------------------- measurements


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.iterdir()) / 2**20


def step_build(corpus: Path, index_dir: Path) -> dict:
    t0 = time.perf_counter()
    r = bm25.BM25Retriever.load(corpus, index_dir, rebuild=True)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    bm25_index.full_hash(corpus)
    hash_s = time.perf_counter() - t0
    r.close()
    return {"build_s": build_s, "full_hash_s": hash_s, "build_rss_mb": peak_rss_mb()}


def latency(r: bm25.BM25Retriever, batch: int, n_batches: int, seed: int) -> tuple[float, float]:
    times = []
    for queries in _batches(batch, n_batches, seed):
        t0 = time.perf_counter()
        r.search_batch(queries, 3)
        times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 95) * 1e3)


def sanity(r: bm25.BM25Retriever, planted: dict[str, str]) -> float:
    # The rare token between two of the 2,000 commonest words: the rare token must dominate.
    noise = [q.split()[:2] for q in make_queries(len(planted), seed=99, max_rank=2_000)]
    queries = [f"{w[0]} {tok} {w[-1]}" for tok, w in zip(planted, noise, strict=True)]
    hits = r.search_batch(queries, 3)
    top1 = [bool(h) and h[0].id == planted[tok] for tok, h in zip(planted, hits, strict=True)]
    return sum(top1) / len(top1)


def step_query(corpus: Path, index_dir: Path, planted: dict[str, str]) -> dict:
    t0 = time.perf_counter()
    r = bm25.BM25Retriever.load(corpus, index_dir)
    load_s = time.perf_counter() - t0
    assert not r.built, "the index should have been reused"
    r.search_batch(make_queries(64, 7), 3)  # warm-up (page cache)
    out = {"load_s": load_s, "sanity": sanity(r, planted)}
    out["q1_p50"], out["q1_p95"] = latency(r, 1, BATCHES, seed=1)
    out["q64_p50"], out["q64_p95"] = latency(r, 64, BATCHES, seed=2)
    out["serve_rss_mb"] = peak_rss_mb()
    return out


def step_variants(corpus: Path, index_dir: Path) -> dict:
    """Score + top-3 selection only (no passage reads), batch of 64: bm25s options vs ours."""
    r = bm25.BM25Retriever.load(corpus, index_dir)
    model, vocab = r._model, r._model.vocab_dict
    batches = [[r._analyzer.term_ids(q, vocab) for q in qs] for qs in _batches(64, 50, seed=5)]
    batches = [[ids for ids in b if ids] for b in batches]
    pool = ThreadPoolExecutor(2)

    def ours(q: list[int]) -> list[tuple[int, float]]:
        return bm25.top_k(model.get_scores_from_ids(q), 3)

    variants = {
        "bm25s retrieve, numpy": lambda b: model.retrieve(b, k=3, show_progress=False),
        "bm25s retrieve, numpy, n_threads=2": (lambda b: model.retrieve(b, k=3, show_progress=False, n_threads=2)),
        "ours: get_scores_from_ids + top_k": lambda b: [ours(q) for q in b],
        "ours, 2 threads": lambda b: list(pool.map(ours, b)),
    }
    if importlib.util.find_spec("numba") is not None:
        jit = bm25s.BM25.load(str(index_dir), backend="numba")
        jit.retrieve(batches[0], k=3, show_progress=False)  # JIT compilation
        variants["bm25s retrieve, numba"] = lambda b: jit.retrieve(b, k=3, show_progress=False)
        variants["bm25s retrieve, numba, n_threads=2"] = lambda b: jit.retrieve(
            b, k=3, show_progress=False, n_threads=2
        )
    out = {}
    for name, fn in variants.items():
        fn(batches[0])
        times = []
        for b in batches:
            t0 = time.perf_counter()
            fn(b)
            times.append(time.perf_counter() - t0)
        out[name] = float(np.percentile(times, 50) * 1e3)
    return out


def _batches(size: int, count: int, seed: int) -> list[list[str]]:
    qs = make_queries(size * count, seed)
    return [qs[i * size : (i + 1) * size] for i in range(count)]


# ---------------------------------------------------------------- driver


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated passage counts")
    p.add_argument("--workdir", default="/tmp/hfdistill-bm25-bench")
    p.add_argument("--child", nargs=2, metavar=("STEP", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    work = Path(args.workdir)
    if args.child:
        step, size = args.child
        print(json.dumps(child(work, step, int(size))))
        return
    rows, variants = [], {}
    for size in (int(s) for s in args.sizes.split(",")):
        row = {"passages": size}
        for step in ("gen", "build", "query"):
            row.update(run_child([step, str(size)]))
            print(f"{size} {step}: {json.dumps(row)}", file=sys.stderr)
        rows.append(row)
        variants[size] = run_child(["variants", str(size)])
    print(table(rows))
    print()
    print(variants_table(variants))


def run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(work: Path, step: str, size: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    corpus, index_dir = work / f"corpus-{size}.jsonl", work / f"corpus-{size}.bm25s"
    planted_file = work / f"planted-{size}.json"
    if step == "gen":
        t0 = time.perf_counter()
        planted_file.write_text(json.dumps(write_corpus(corpus, size)))
        return {"gen_s": time.perf_counter() - t0, "corpus_mb": corpus.stat().st_size / 2**20}
    if step == "build":
        return {**step_build(corpus, index_dir), "index_mb": dir_mb(index_dir)}
    if step == "variants":
        return step_variants(corpus, index_dir)
    return step_query(corpus, index_dir, json.loads(planted_file.read_text()))


COLUMNS = [
    ("passages", "passages", "{:,}"),
    ("corpus_mb", "corpus MB", "{:.0f}"),
    ("build_s", "build s", "{:.1f}"),
    ("build_rss_mb", "build peak RSS MB", "{:.0f}"),
    ("index_mb", "index MB", "{:.0f}"),
    ("load_s", "load s", "{:.2f}"),
    ("full_hash_s", "full hash s", "{:.2f}"),
    ("serve_rss_mb", "serving RSS MB", "{:.0f}"),
    ("q1_p50", "1 query p50 ms", "{:.2f}"),
    ("q1_p95", "1 query p95 ms", "{:.2f}"),
    ("q64_p50", "64 queries p50 ms", "{:.1f}"),
    ("q64_p95", "64 queries p95 ms", "{:.1f}"),
    ("sanity", "planted top-1", "{:.0%}"),
]


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---:" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(fmt.format(r[key]) for key, _, fmt in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def variants_table(variants: dict[int, dict[str, float]]) -> str:
    sizes = list(variants)
    names = list(variants[sizes[0]])
    head = "| score + top-3, batch of 64, p50 ms | " + " | ".join(f"{n:,} passages" for n in sizes) + " |"
    sep = "|---|" + "|".join("---:" for _ in sizes) + "|"
    body = [
        f"| {name} | " + " | ".join(f"{variants[n].get(name, float('nan')):.1f}" for n in sizes) + " |"
        for name in names
    ]
    return "\n".join([head, sep, *body])


if __name__ == "__main__":
    main()
