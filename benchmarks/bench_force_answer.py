"""The forced answer at the context limit: the share of rollouts it saves where conversations run long. A benchmark.

`hfdistill generate` runs twice on the same questions against the simulated vLLM (sim_vllm.py) with a small
context window (`--max-model-len`, listed at /v1/models as vLLM lists it) and the simulated retrieval server:
once as it is (the teacher is asked for its answer when the next turn would not fit, `force_answer.j2`) and
once with `--no-force-answer` (such a conversation ends `context`: the server refused the prompt or cut the
turn). The simulated teacher needs a heavy-tailed number of searches (most 1-3, some up to 8) and writes
50-400 tokens a turn; each search brings back about 120 tokens per query; so the longer conversations outgrow
the window. It answers the force-answer prompt at once, as Tongyi-DeepResearch does.

    python benchmarks/bench_force_answer.py                     # 400 questions, window 4096, about a minute
    python benchmarks/bench_force_answer.py --rows 1000 --max-model-len 3072 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
import sim_vllm  # noqa: E402 - the simulator names its questions and answers

sys.path.insert(0, str(REPO))
from tests.simulators import serve  # noqa: E402 - the simulators as processes on free ports

# (name, extra arguments); "{headroom}" is the window less --max_tokens less room for one more observation
CONFIGS = (("forced answer (default budget)", ()), ("--no-force-answer", ("--no-force-answer",)),
           ("forced answer, --max-context-tokens {headroom}", ("--max-context-tokens", "{headroom}")))
LOST = ("context", "length")  # what a conversation that outgrew the window ends as


def _generate(inp: Path, out: Path, vllm_url: str, retrieval_url: str, extra: tuple[str, ...],
              args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, "-m", "hfdistill", "generate", "--input_file", str(inp), "--output_file", str(out),
            "--vllm_url", f"{vllm_url}/v1", "--retrieval_url", retrieval_url, "--max_assistant_turns",
            str(args.max_turns), "--max_tokens", str(args.max_tokens), "--keep", "all", "-q", *extra]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy(), timeout=args.timeout,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"hfdistill generate exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    rows = pq.read_table(out, columns=["stop_reason", "exact_match", "assistant_turns"]).to_pylist()
    return {"seconds": round(time.monotonic() - started, 1), "rows": len(rows),
            "stop_reasons": dict(Counter(r["stop_reason"] for r in rows)),
            "correct": sum(bool(r["exact_match"]) for r in rows),
            "forced_correct": sum(bool(r["exact_match"]) for r in rows if r["stop_reason"] == "forced_answer"),
            "teacher_calls": _metrics(vllm_url)["requests"], "refused": _metrics(vllm_url)["context_refusals"]}


def _metrics(url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return json.load(response)


def run(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    questions = [sim_vllm.make_question(i) for i in range(args.rows)]
    golden = [[sim_vllm.golden_answer_for(sim_vllm.question_key(q))] for q in questions]
    inp = work / "questions.parquet"
    pq.write_table(pa.table({"question": questions, "golden_answers": golden}), inp)
    results = []
    headroom = str(args.max_model_len - args.max_tokens - args.observation_room)
    for name, extra in CONFIGS:  # fresh simulators per run: each one's /metrics counts its run alone
        name, extra = name.format(headroom=headroom), tuple(a.format(headroom=headroom) for a in extra)
        vllm, vllm_url = serve("sim_vllm.py", "--max-model-len", str(args.max_model_len), "--tpot", str(args.tpot))
        retrieval, retrieval_url = serve("sim_retrieval.py")
        try:
            result = _generate(inp, work / f"{len(results)}.parquet", vllm_url, retrieval_url, extra, args)
        finally:
            for proc in (vllm, retrieval):
                proc.terminate()
                proc.wait(10)
        results.append({"config": name, **result})
    return results


def render(results: list[dict[str, Any]], rows: int) -> str:
    plain = results[1]
    lost_plain = sum(plain["stop_reasons"].get(r, 0) for r in LOST)
    lines = ["| run | answer | forced_answer | context | length | max_turns | correct | prompts refused | teacher "
             "calls | wall |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        s = r["stop_reasons"]
        lines.append(f"| {r['config']} | {s.get('answer', 0)} | {s.get('forced_answer', 0)} | {s.get('context', 0)} | "
                     f"{s.get('length', 0)} | {s.get('max_turns', 0)} | {r['correct']} | {r['refused']} | "
                     f"{r['teacher_calls']} | {r['seconds']} s |")
    lines += ["", f"Without the forced answer {lost_plain} of {rows} rollouts ({lost_plain / rows:.1%}) outgrew the "
                  "window."]
    for forced in (results[0], results[2]):
        lost = sum(forced["stop_reasons"].get(r, 0) for r in LOST)
        saved = (lost_plain - lost) / lost_plain if lost_plain else 0.0
        answers = forced["stop_reasons"].get("forced_answer", 0)
        lines.append(f"- {forced['config']}: {lost} lost, {saved:.0%} of them saved; {answers} forced answers "
                     f"({forced['forced_correct']} correct)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=400, help="questions (one rollout each)")
    p.add_argument("--max-model-len", type=int, default=4096, help="the simulated server's context window")
    p.add_argument("--max-tokens", type=int, default=512, help="--max_tokens of each turn")
    p.add_argument("--max-turns", type=int, default=12, help="--max_assistant_turns (room for every search)")
    p.add_argument("--observation-room", type=int, default=1024,
                   help="the third run's headroom for one more observation, in tokens")
    p.add_argument("--tpot", type=float, default=0.0001, help="the simulator's seconds per completion token")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a run is given up")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-force-answer-") as tmp:
        results = run(args, Path(tmp))
    print(f"{args.rows} questions, window {args.max_model_len} tokens, --max_tokens {args.max_tokens}, "
          f"--max_assistant_turns {args.max_turns}\n")
    print(render(results, args.rows))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
