"""A run's identity: what makes two rollouts the same, and what a finished output says of itself.

Identity is by content. A run directory is named by a fingerprint of every option that changes a
rollout (sampling, turns, templates, the corpus's content hash, an explicit model), and each
rollout inside it by its question's content (and golden answers, when a template shows them to
the teacher), that question's occurrence in the input, and its rollout index. So growing
MAX_SAMPLES, touching, copying or reordering the input, or moving the corpus reuses every finished
rollout; changing a rollout option names the option and refuses (or, with --overwrite, starts
over); output-time options (`--keep`) never invalidate anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hfdistill.core.config import DistillConfig
from hfdistill.core.errors import ConfigError
from hfdistill.run.journal import FORMAT
from hfdistill.run.output import failures_path, read_record, row_count, skipped_path
from hfdistill.run.record import GenerationRecord, RolloutOptions

__all__ = ["RunIdentity", "identify", "rollout_options"]

log = logging.getLogger(__name__)


def rollout_options(config: DistillConfig, *, templates: dict[str, str], corpus: str | None,
                    retriever: dict[str, Any] | None = None,
                    tools: tuple[dict[str, Any], ...] | None = None) -> RolloutOptions:
    """Every option of `config` that changes what one rollout produces (see `RolloutOptions`); a dense or
    hybrid retriever adds its identity (kind, the index's vectors, the encoder), a tool set other than search
    alone its tools (names, schemas, servers)."""
    c = config
    return RolloutOptions(
        model=c.model, tool_call_mode=c.tool_call_mode, temperature=c.temperature, top_p=c.top_p,
        presence_penalty=c.presence_penalty, max_tokens=c.max_tokens, seed=c.seed,
        max_assistant_turns=c.max_assistant_turns, topk=c.topk, query_arg=c.query_arg,
        observation_format=c.observation_format, corpus=corpus, templates=templates, force_answer=c.force_answer,
        max_context_tokens=c.max_context_tokens, retriever=retriever, tools=tools)


@dataclass(frozen=True)
class RunIdentity:
    """Who a run is: its fingerprint, the options behind it, where its journal lives, what it writes."""

    fingerprint: str
    options: RolloutOptions
    run_dir: Path
    output: Path

    def existing(self, input_digest: str, view: dict[str, Any], overwrite: bool) -> GenerationRecord | None:
        """The record of an output that is already complete for this input and view, or None to go ahead.

        An output made with other rollout options is refused (naming them) unless `overwrite`,
        which also discards this run's journal. A complete file is verified (its row count against
        its record) before it is trusted.
        """
        if overwrite:
            for path in (self.output, failures_path(self.output), skipped_path(self.output)):
                path.unlink(missing_ok=True)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            return None
        if not self.output.exists():
            return None
        record = read_record(self.output)
        if record is None:
            raise ConfigError(f"{self.output} exists and was not written by hfdistill; choose another "
                              "--output_file, or pass --overwrite to replace it")
        if record.fingerprint != self.fingerprint:
            raise ConfigError(f"{self.output} already exists and was made with "
                              f"{_changed(record.generation_options.to_json(), self.options.to_json())}; pass "
                              "--overwrite to replace it, or choose another --output_file")
        if not (record.complete and record.input_digest == input_digest and record.view == view):
            return None
        if row_count(self.output) != record.rows:
            log.warning("%s holds %d rows but its record promises %s; writing it again from the journal",
                        self.output, row_count(self.output), record.rows)
            return None
        return record

    def note_other_runs(self) -> None:
        parent = self.run_dir.parent
        for other in sorted(parent.glob(f"{self.output.name}-*")) if parent.exists() else ():
            if other != self.run_dir and (other / "journal.jsonl").exists():
                log.warning("note: %s holds a run of %s with other options; it is left alone (delete it if "
                            "unneeded)", other, self.output.name)


def identify(options: RolloutOptions, output: Path) -> RunIdentity:
    """The identity of a run with these rollout options writing `output`."""
    payload = {"journal_format": FORMAT, "options": options.to_json()}
    fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return RunIdentity(fingerprint, options, output.parent / ".hfdistill" / f"{output.name}-{fingerprint[:12]}",
                       output)


def _changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    diffs = [f"{k} {old.get(k)!r} (now {new.get(k)!r})" for k in sorted(set(old) | set(new))
             if old.get(k) != new.get(k)]
    return "other options: " + ", ".join(diffs) if diffs else "another hfdistill version (journal format)"
