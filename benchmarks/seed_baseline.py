"""The original `generate_search_data.py` re-implemented for the throughput benchmark.

Its design is kept on purpose, defects included, because it is what is being measured:
rows go in lockstep batches of BATCH_SIZE through `asyncio.gather` (each batch waits for its
slowest conversation), every turn calls `AsyncOpenAI(...).chat.completions.create(..., tools=...)`,
retrieval goes through blocking `requests.post` inside the coroutine (stalling every other
conversation), and the output is written once at the end. Only the retrieval payload is corrected
(`{"queries", "topk": 3, "return_scores": true}`) so searches succeed and the workload matches.

    VLLM_URL=http://127.0.0.1:8000/v1 RETRIEVAL_URL=http://127.0.0.1:8001/retrieve \
    INPUT_FILE=questions.parquet OUTPUT_FILE=out.parquet python benchmarks/seed_baseline.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import openai
import pandas as pd
import requests
from openai import AsyncOpenAI

SYSTEM_PROMPT = (
    "You are a deep research assistant. Answer the user's question by searching for information. "
    "Use the search tool as often as needed, then give the final answer inside <answer></answer> tags."
)
SEARCH_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search a Wikipedia corpus and return the top passages for each query.",
        "parameters": {
            "type": "object",
            "properties": {
                "query_list": {"type": "array", "items": {"type": "string"}, "description": "search queries"}
            },
            "required": ["query_list"],
        },
    },
}


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description="Generate search-tool conversations (original design).")
    p.add_argument("--vllm_url", default=env("VLLM_URL", "http://localhost:8000/v1"))
    p.add_argument("--retrieval_url", default=env("RETRIEVAL_URL", "http://127.0.0.1:8000/retrieve"))
    p.add_argument("--max_assistant_turns", type=int, default=int(env("MAX_ASSISTANT_TURNS", "3")))
    p.add_argument("--max_samples", type=int, default=int(env("MAX_SAMPLES", "-1")))
    p.add_argument("--input_file", default=env("INPUT_FILE", "data/hotpotqa_hard_train/train.parquet"))
    p.add_argument("--output_file", default=env("OUTPUT_FILE", "baseline/DataKD/train_distilled.parquet"))
    p.add_argument("--batch_size", type=int, default=int(env("BATCH_SIZE", "16")))
    p.add_argument("--temperature", type=float, default=float(env("TEMPERATURE", "0.7")))
    p.add_argument("--max_tokens", type=int, default=int(env("MAX_TOKENS", "2048")))
    # Not in the original: lets the benchmark separate the lockstep cost from the blocking-search cost.
    p.add_argument("--retrieval_in_thread", action="store_true", help="run searches off the event loop")
    return p.parse_args()


def search(retrieval_url: str, queries: list[str]) -> str:
    """Blocking, as in the original: the whole event loop waits for this HTTP call."""
    payload = {"queries": queries, "topk": 3, "return_scores": True}
    try:
        response = requests.post(retrieval_url, json=payload, timeout=60)
        response.raise_for_status()
        results = response.json()["result"]
    except (requests.RequestException, ValueError, KeyError) as e:
        return f"Search error: {e}"
    blocks = []
    for query, documents in zip(queries, results, strict=False):
        lines = [f"Query: {query}"]
        for i, item in enumerate(documents, 1):
            title, _, text = item["document"]["contents"].partition("\n")
            lines.append(f"[{i}] {title.strip(chr(34))}: {text}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _tool_call_dict(call: Any) -> dict[str, Any]:
    function = {"name": call.function.name, "arguments": call.function.arguments}
    return {"id": call.id, "type": "function", "function": function}


async def _observe(call: Any, args: argparse.Namespace) -> dict[str, Any]:
    queries = json.loads(call.function.arguments).get("query_list", [])
    if args.retrieval_in_thread:
        observation = await asyncio.to_thread(search, args.retrieval_url, queries)
    else:
        observation = search(args.retrieval_url, queries)  # blocks the event loop, as the original did
    return {"role": "tool", "tool_call_id": call.id, "content": observation}


async def process_single(client: AsyncOpenAI, model: str, row: dict[str, Any], args: argparse.Namespace) -> dict:
    question = str(row.get("question", ""))
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Question: {question}"},
    ]
    turns = 0
    try:
        for _ in range(args.max_assistant_turns):
            response = await client.chat.completions.create(
                model=model,
                messages=messages,
                tools=[SEARCH_TOOL],
                temperature=args.temperature,
                max_tokens=args.max_tokens,
            )
            turns += 1
            message = response.choices[0].message
            calls = message.tool_calls or []
            entry: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
            if calls:
                entry["tool_calls"] = [_tool_call_dict(c) for c in calls]
            messages.append(entry)
            if not calls:
                break
            for call in calls:
                messages.append(await _observe(call, args))
    except (openai.OpenAIError, ValueError) as e:
        print(f"conversation failed: {e}", file=sys.stderr)
    extra_info = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
    return {
        "messages": messages,
        "tools": [SEARCH_TOOL],
        "question": question,
        "extra_info": extra_info or {"index": int(row.get("_index", 0))},
        "assistant_turns": turns,
    }


async def run(args: argparse.Namespace) -> list[dict]:
    df = pd.read_parquet(args.input_file)
    if args.max_samples > 0:
        df = df.head(args.max_samples)
    rows = [{**r, "_index": i} for i, r in enumerate(df.to_dict("records"))]
    client = AsyncOpenAI(base_url=args.vllm_url, api_key="EMPTY")
    model = (await client.models.list()).data[0].id
    results: list[dict] = []
    started = time.time()
    try:
        for start in range(0, len(rows), args.batch_size):
            batch = rows[start : start + args.batch_size]
            # The lockstep barrier being measured: the next batch starts when the slowest one ends.
            results += await asyncio.gather(*(process_single(client, model, r, args) for r in batch))
            print(f"{len(results)}/{len(rows)} rows, {time.time() - started:.1f}s", file=sys.stderr)
    finally:
        await client.close()
    return results


def main() -> int:
    args = parse_args()
    results = asyncio.run(run(args))
    os.makedirs(os.path.dirname(os.path.abspath(args.output_file)), exist_ok=True)
    pd.DataFrame(results).to_parquet(args.output_file)  # once, at the end, as the original did
    print(f"wrote {len(results)} rows to {args.output_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
