"""Engines: where a run's rollouts are made.

`local` (the default) is `Distiller.map` in this process (see `commands.generate`). `ray` spreads the same
rollout loop over an actor pool across a Ray cluster while this process, the driver, keeps the
run: lock, journal, identity and output are the local code (see `engines.ray`). Engines import
the layers below them (`run/`, the clients, `core/`); nothing below imports an engine.
"""

from __future__ import annotations

import importlib.util

from hfdistill.core.errors import ConfigError

__all__ = ["ENGINES", "check_engine"]

ENGINES = ("local", "ray")


def check_engine(engine: str, ray_actors: int | None) -> None:
    """Validate the engine options, and that Ray is installed when it is asked for (without importing it)."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if ray_actors is not None and ray_actors < 1:
        raise ConfigError(f"--ray-actors must be >= 1, got {ray_actors}")
    if ray_actors is not None and engine != "ray":
        raise ConfigError("--ray-actors applies to --engine ray only")
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError('--engine ray needs Ray, which is not installed: pip install "hfdistill[ray]"')
