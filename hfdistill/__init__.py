"""hfdistill: distil multi-turn search-tool conversations from a teacher on vLLM into verl-ready datasets."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hfdistill")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from hfdistill.config import DistillConfig, RetryPolicy
from hfdistill.distiller import Distiller
from hfdistill.errors import HfdistillError

__all__ = ["DistillConfig", "Distiller", "HfdistillError", "RetryPolicy", "__version__"]
