"""What the servers were found to serve: the teacher's model id and tool-call protocol, the judge's model id.

One value per run, shared by the distiller and every event loop's teacher and judge client: the
probe fills it in once, an engine's worker is handed the driver's, and nobody copies it around.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hfdistill.core.config import DistillConfig

__all__ = ["Served"]


@dataclass
class Served:
    model: str | None = None  # --model, else the id the teacher lists (set by the probe)
    protocol: str | None = None  # "native" | "text"; None until the probe settles --tool-call-mode auto
    judge_model: str | None = None  # --judge-model, else the id the judge lists
    max_model_len: int | None = None  # the teacher's context window, as vLLM lists it (None: not listed)
    # Teacher URLs that refuse request priorities (vLLM's default fcfs policy): they are sent none.
    no_priority: set[str] = field(default_factory=set)

    @classmethod
    def asked(cls, config: DistillConfig) -> Served:
        """What the options ask for; the probe fills in the rest."""
        protocol = None if config.tool_call_mode == "auto" else config.tool_call_mode
        return cls(config.model, protocol, config.judge.model if config.judge is not None else None)
