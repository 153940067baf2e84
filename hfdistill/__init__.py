"""hfdistill: distil multi-turn search-tool conversations from a teacher on vLLM into verl-ready datasets."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("hfdistill")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from hfdistill.core.config import DistillConfig
    from hfdistill.core.errors import HfdistillError
    from hfdistill.core.retry import RetryPolicy
    from hfdistill.engines.distiller import Distiller

__all__ = ["DistillConfig", "Distiller", "HfdistillError", "RetryPolicy", "__version__"]

_LAZY = {"DistillConfig": "hfdistill.core.config", "RetryPolicy": "hfdistill.core.retry",
         "Distiller": "hfdistill.engines.distiller", "HfdistillError": "hfdistill.core.errors"}


def __getattr__(name: str) -> Any:
    # Lazy so that `hfdistill serve-retriever` and `inspect` do not pay for importing `datasets`.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hfdistill' has no attribute {name!r}")
