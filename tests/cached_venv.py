"""Build (once) and locate a cached virtual environment for heavy third-party packages used by tests.

verl and vLLM pin large dependencies that must not leak into the project's own environment, so the tests
that need them run them in a venv of their own, built by `ensure_venv` from a list of pip steps and cached
between runs under ~/.cache/hfdistill (or a directory named by an environment variable).

The venv is built under a temporary name beside the target, under a file lock, and renamed into place only
after a marker file recording what was installed is written: a killed build never looks complete, parallel
test sessions build it once, and a venv whose marker differs (other packages, other Python) is rebuilt.
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
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Step", "VenvRecipe", "ensure_venv", "venv_python"]

# One pip invocation: (extra pip flags, requirements). "uninstall" as the first flag runs `pip uninstall -y`.
Step = tuple[tuple[str, ...], tuple[str, ...]]

# Environment variables that would make the child interpreter or pip look outside the new venv.
_LEAKY_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_USER", "PIP_TARGET", "PIP_PREFIX")


@dataclass(frozen=True)
class VenvRecipe:
    """What a cached venv holds: its name, the pip steps, an import that proves it works."""

    name: str  # e.g. "verl-0.9.1": the default directory is ~/.cache/hfdistill/<name>-venv
    env_var: str  # overrides the directory, e.g. HFDISTILL_VERL_VENV
    steps: tuple[Step, ...]
    check: str  # python code run in the finished venv; a failure fails the build
    marker_name: str
    package: tuple[str, str]  # (key, version) recorded in the marker, e.g. ("verl", "0.9.1")

    def default_dir(self) -> Path:
        override = os.environ.get(self.env_var)
        if override:
            return Path(override).expanduser().resolve()
        return Path.home() / ".cache" / "hfdistill" / f"{self.name}-venv"

    def marker_payload(self, base_python: str | None = None) -> dict[str, object]:
        return {
            self.package[0]: self.package[1],
            "steps": [[list(flags), list(reqs)] for flags, reqs in self.steps],
            "python": list(sys.version_info[:3]),
            "base_python": base_python or _base_python(),
        }


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _base_python() -> str:
    # A venv made from a venv's python points at the base interpreter; record that so the marker is stable.
    return str(Path(getattr(sys, "_base_executable", sys.executable)).resolve())


def _log(tag: str, msg: str) -> None:
    print(f"[{tag}] {msg}", file=sys.stderr, flush=True)


def is_complete(recipe: VenvRecipe, venv: Path) -> bool:
    marker = venv / recipe.marker_name
    if not (marker.is_file() and venv_python(venv).exists()):
        return False
    try:
        return json.loads(marker.read_text()) == recipe.marker_payload()
    except (OSError, ValueError):
        return False


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY_ENV}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def run_logged(cmd: Sequence[str], what: str, tag: str) -> None:
    """Run a command, echoing its output to stderr; on failure raise with its tail (pip's error)."""
    _log(tag, f"{what}: {' '.join(cmd)}")
    tail: collections.deque[str] = collections.deque(maxlen=60)
    with subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          text=True, env=_child_env()) as proc:
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


def _remove_stale(venv: Path, tag: str) -> None:
    # Leftovers of killed builds, and the previous venv of an interrupted swap; safe under the lock.
    for stale in venv.parent.glob(f".{venv.name}.tmp-*"):
        _log(tag, f"removing leftover {stale}")
        shutil.rmtree(stale, ignore_errors=True)


def _build(recipe: VenvRecipe, target: Path) -> None:
    tag = f"{recipe.name} venv"
    run_logged([sys.executable, "-m", "venv", str(target)], "create venv", tag)
    py = str(venv_python(target))
    for flags, reqs in recipe.steps:
        if flags[:1] == ("uninstall",):
            run_logged([py, "-m", "pip", "uninstall", "-y", *flags[1:], *reqs], f"uninstall {' '.join(reqs)}", tag)
        else:
            run_logged([py, "-m", "pip", "install", "--no-input", *flags, *reqs], f"install {' '.join(reqs)}", tag)
    # Fail at build time, not in the first test, if the packages cannot be imported.
    run_logged([py, "-c", recipe.check], "import check", tag)
    (target / recipe.marker_name).write_text(json.dumps(recipe.marker_payload(), indent=2) + "\n")


def ensure_venv(recipe: VenvRecipe, venv: Path | None = None) -> Path:
    """Return the python of a complete venv for `recipe`, building it first if missing, partial or outdated.

    The interpreter is invoked by path and pip as `python -m pip`, so the final rename does not break
    anything the tests use (console-script shebangs still name the temporary path; nothing here runs them).
    """
    venv = venv or recipe.default_dir()
    tag = f"{recipe.name} venv"
    if is_complete(recipe, venv):
        return venv_python(venv)
    with _locked(venv):
        if is_complete(recipe, venv):  # another process finished it while we waited
            return venv_python(venv)
        _remove_stale(venv, tag)
        tmp = venv.parent / f".{venv.name}.tmp-{os.getpid()}"
        started = time.monotonic()
        _log(tag, f"building in {tmp} (with {sys.executable})")
        try:
            _build(recipe, tmp)
            if venv.exists():  # outdated or half-built: move aside first so the swap is one rename
                old = venv.parent / f".{venv.name}.tmp-old-{os.getpid()}"
                venv.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(venv)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _log(tag, f"ready at {venv} in {time.monotonic() - started:.0f}s")
    return venv_python(venv)
