"""The `[dense]` extra: one line naming the install command when a part of it is missing."""

from __future__ import annotations

import importlib

from hfdistill.core.errors import ConfigError

__all__ = ["INSTALL", "require_dense", "require_faiss"]

INSTALL = 'pip install "hfdistill[dense]"'


def require_dense(what: str = "dense retrieval") -> None:
    """Raise a one-line ConfigError unless torch and transformers can be imported."""
    missing = [name for name in ("torch", "transformers") if not _importable(name)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ConfigError(f"{what} needs {' and '.join(missing)}, which {verb} not installed: {INSTALL}")


def require_faiss(what: str) -> None:
    """Raise a one-line ConfigError unless faiss (faiss-cpu) can be imported."""
    if not _importable("faiss"):
        raise ConfigError(f"{what} needs faiss-cpu, which is not installed: {INSTALL}")


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True
