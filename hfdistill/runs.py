"""A run's identity and record: what makes two runs the same, and what a finished file says of itself.

A run directory is named by a fingerprint of the input and of every option that changes a rollout,
so a rerun of the same command finds its journal and a run with other options never mixes with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import datasets

from hfdistill import __version__
from hfdistill.distiller import Distiller
from hfdistill.errors import ConfigError
from hfdistill.inputs import input_kind
from hfdistill.output import read_record
from hfdistill.progress import RunStats

__all__ = ["RunIdentity", "generation_options", "identify"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunIdentity:
    """Who a run is: its fingerprint, the options behind it, how its output is viewed, where it lives."""

    fingerprint: str
    options: dict[str, Any]  # every option that changes a rollout
    view: dict[str, Any]  # options that only select what is written: keep, rollouts, samples
    run_dir: Path
    output: Path

    def existing(self, overwrite: bool) -> dict[str, Any] | None:
        """The record of an output that is already complete for this run, or None to go ahead.

        An output made with other options is refused (naming them) unless `overwrite`, which
        also discards this run's journal.
        """
        if overwrite:
            with contextlib.suppress(FileNotFoundError):
                self.output.unlink()
            shutil.rmtree(self.run_dir, ignore_errors=True)
            return None
        if not self.output.exists():
            return None
        record = read_record(self.output) or {}
        if record.get("fingerprint") != self.fingerprint:
            raise ConfigError(f"{self.output} already exists and was made from "
                              f"{_changed(record.get('generation_options', {}), self.options)}; pass --overwrite "
                              "to replace it, or choose another --output_file")
        return record if record.get("complete") and record.get("view") == self.view else None

    def note_other_runs(self) -> None:
        parent = self.run_dir.parent
        for other in sorted(parent.glob(f"{self.output.name}-*")) if parent.exists() else ():
            if other != self.run_dir and (other / "journal.jsonl").exists():
                log.warning("note: %s holds a run of %s with other input or options; it is left alone "
                            "(delete it if unneeded)", other, self.output.name)

    def record(self, distiller: Distiller, *, source: str, command: str, batch_size: int, questions: int,
               rows: int, stats: RunStats) -> dict[str, Any]:
        """The generation record stored in the output file (read by `card` and `push`)."""
        c = distiller.config
        plan = distiller.plan
        return {
            "hfdistill_version": __version__, "fingerprint": self.fingerprint,
            "complete": not distiller.failures, "view": self.view,
            "teacher": {"model": distiller.model, "hosts": [urlsplit(u).hostname for u in c.endpoints],
                        "protocol": distiller.mode},
            "retrieval": {"corpus": os.path.basename(c.corpus)} if c.corpus else
                         {"host": urlsplit(c.retrieval_url).hostname},
            "generation_options": self.options,
            "run_options": {**self.view, "batch_size": batch_size, "concurrency": c.window},
            "templates": {"names": list(distiller.prompts.templates.names),
                          "sha256": distiller.prompts.templates.digest()},
            "input": {"source": source, "kind": input_kind(source), "questions": questions,
                      "question_fields": list(plan.question) if plan else [],
                      "answer_fields": list(plan.answers) if plan else []},
            "rows": rows, "counts": stats.to_dict(), "command": command,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def identify(distiller: Distiller, ds: datasets.Dataset, output: Path, view: dict[str, Any]) -> RunIdentity:
    options = generation_options(distiller)
    # max_samples only selects a prefix, so it stays out: growing it later reuses the journal.
    plan = distiller.plan
    payload = {"input": ds._fingerprint or None, "options": options,
               "plan": [list(plan.question), list(plan.answers)] if plan else None}
    fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return RunIdentity(fingerprint, options, view, output.parent / ".hfdistill" / f"{output.name}-{fingerprint[:12]}",
                       output)


def generation_options(distiller: Distiller) -> dict[str, Any]:
    """Every option that changes what one rollout produces.

    URLs are left out (a server that moved is the same server), and so is the model id the server
    reports when --model is not given: each journal line records the model that made it instead.
    """
    c = distiller.config
    corpus = None
    if c.corpus:
        st = os.stat(c.corpus)
        corpus = {"path": os.path.abspath(c.corpus), "size": st.st_size, "mtime": int(st.st_mtime)}
    return {
        "model": c.model, "tool_call_mode": c.tool_call_mode, "temperature": c.temperature,
        "top_p": c.top_p, "presence_penalty": c.presence_penalty, "max_tokens": c.max_tokens, "seed": c.seed,
        "max_assistant_turns": c.max_assistant_turns, "topk": c.topk, "query_arg": c.query_arg,
        "observation_format": c.observation_format, "question_field": c.question_field,
        "answer_field": c.answer_field, "corpus": corpus, "templates": distiller.prompts.templates.digest(),
    }


def _changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    diffs = [f"{k} {old.get(k)!r} (now {new.get(k)!r})" for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k)]
    return "other options: " + ", ".join(diffs) if diffs else "another input"
