"""How long `hfdistill report` takes on a big output, and how big the page is.

Writes a synthetic output of N rows shaped like hfdistill's (varied text, 1-4 searches, a
thinking block per turn, ~3 KB of conversation per row, row groups of 500 as `generate` writes
them), then times `write_report` with the default sample and reports the page size and peak RSS.

    python benchmarks/bench_report.py [--rows 100000] [--max-rows 2000]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hfdistill.publish.report import DEFAULT_MAX_ROWS

WORDS = ("paris", "berlin", "capital", "france", "germany", "river", "founded", "college", "dubai", "princess",
         "haya", "city", "largest", "country", "europe", "western", "population", "museum", "history", "king",
         "queen", "war", "treaty", "university")


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _row(rng: random.Random, i: int) -> dict:
    searches = rng.choice((0, 1, 1, 2, 2, 3, 4))
    messages = [{"role": "system", "content": _text(rng, 60)},
                {"role": "user", "content": f"Question: {_text(rng, 12)}?"}]
    for k in range(searches):
        messages.append({"role": "assistant", "content": "", "reasoning_content": _text(rng, 40),
                         "tool_calls": [{"id": f"c{i}-{k}", "type": "function", "function": {
                             "name": "search", "arguments": f'{{"query_list": ["{_text(rng, 4)}"]}}'}}]})
        messages.append({"role": "tool", "content": _text(rng, 120), "tool_call_id": f"c{i}-{k}", "name": "search"})
    stop = rng.choice(("answer", "answer", "answer", "max_turns", "no_tool_call", "length"))
    messages.append({"role": "assistant", "content": f"<answer>{_text(rng, 2)}</answer>",
                     "reasoning_content": _text(rng, 30)})
    exact = rng.random() < 0.4 if stop == "answer" else False
    return {"messages": messages, "question": _text(rng, 12), "golden_answers": [_text(rng, 2)],
            "prediction": _text(rng, 2), "exact_match": exact, "sub_match": exact, "f1": float(exact),
            "stop_reason": stop, "assistant_turns": searches + 1, "num_tool_calls": searches, "num_tool_errors": 0,
            "num_queries": searches, "usage": {"prompt_tokens": rng.randint(500, 8000),
                                               "completion_tokens": rng.randint(20, 2000)},
            "rollout_index": 0, "input_index": i}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS)
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.parquet"
        writer = None
        for start in range(0, args.rows, 500):
            table = pa.Table.from_pylist([_row(rng, i) for i in range(start, min(start + 500, args.rows))])
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table.cast(writer.schema))
        assert writer is not None
        writer.close()
        # In a process of its own, so the peak RSS is the report's, not this script's data generation.
        code = ("import resource, sys, time; from hfdistill.publish.report import write_report; "
                "t = time.perf_counter(); "
                "r = write_report(sys.argv[1], sys.argv[2], max_rows=int(sys.argv[3])); "
                "print(time.perf_counter() - t, r.size, r.sampled, "
                "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", code, str(path), str(Path(tmp) / "report.html"),
                              str(args.max_rows)], capture_output=True, text=True, check=True).stdout.split()
        seconds, size, sampled, rss_kb = float(out[0]), int(out[1]), int(out[2]), int(out[3])
        print(f"{args.rows:,} rows ({path.stat().st_size / 1e6:.0f} MB parquet): report in {seconds:.2f} s, "
              f"page {size / 1e6:.1f} MB with {sampled:,} conversations, peak RSS {rss_kb / 1024:.0f} MB")

if __name__ == "__main__":
    main()
