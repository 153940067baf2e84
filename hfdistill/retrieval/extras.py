"""The `[dense]` extra: one line naming the install command when a part of it is missing."""

from __future__ import annotations

import importlib.util

from hfdistill.core.errors import ConfigError

__all__ = ["INSTALL", "require_dense", "require_faiss"]

INSTALL = 'pip install "hfdistill[dense]"'


def require_dense(what: str = "dense retrieval") -> None:
    """Raise a one-line ConfigError unless torch and transformers can be imported."""
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"{what} needs {' and '.join(missing)}, which are not installed: {INSTALL}")


def require_faiss(what: str) -> None:
    """Raise a one-line ConfigError unless faiss (faiss-cpu) can be imported."""
    if importlib.util.find_spec("faiss") is None:
        raise ConfigError(f"{what} needs faiss-cpu, which is not installed: {INSTALL}")
