"""The GPU benchmark's code paths, run on CPU at toy sizes (`--tiny`): it must work before it meets a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_benchmark_runs_tiny_on_cpu(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "bench_dense_gpu.py"
    done = subprocess.run([sys.executable, str(script), "--tiny", "--json", str(tmp_path / "r.json")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert {r["encoder"] for r in report["build"]} == {"e5-base", "all-MiniLM-L6"}
    assert all(r["passages_per_s"] > 0 and 100 < r["mean_tokens"] <= 180 for r in report["build"])
    assert {r["selection"] for r in report["search"]} == {"topk", "group-256", "group-1024",
                                                              "group-256-chunk-4M"}
    assert all(r["same_top10_as_topk"] == 1.0 for r in report["search"])  # float32 on CPU: no ties to break
    assert all(r["mean_batch"] > 1 and r["p99_ms"] >= r["p50_ms"] for r in report["serve"])  # the batcher batched
    [load] = report["load"]
    assert load["rows"] == 20_000 and load["peak_rss_mib"] - load["rss_before_mib"] < 200
    for section in ("## build", "## search", "## serve", "## load"):
        assert section in done.stdout
