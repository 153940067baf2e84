"""Merging our card into an existing one: what `hfdistill push` does after `Dataset.push_to_hub`,
and `hfdistill card -o` does to a card file.

- metadata: every existing key is kept (`dataset_info` and `configs` from push_to_hub, anything
  a person set); `tags`, `task_categories` and `source_datasets` gain ours; `size_categories`
  becomes ours (it describes the rows just pushed); `license` is ours only when given explicitly.
- body: an empty one becomes ours; text between the markers is replaced by the new section;
  other hand-written text is kept as is, unless `overwrite` replaces it with ours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import DatasetCard
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from hfdistill.core.atomic import atomic_write_text
from hfdistill.core.errors import ConfigError, InputError
from hfdistill.publish.card import build_card, card_body, card_metadata, load_card_inputs, render_card
from hfdistill.run.record import GenerationRecord

__all__ = ["MergedCard", "merge_card", "write_card"]

_MERGED_LISTS = ("tags", "task_categories", "source_datasets")
_TAIL_KEYS = ("dataset_info", "configs")
_BEGIN_RE = re.compile(r"<!--\s*hfdistill:card:begin\b.*?-->", re.S)
_END_RE = re.compile(r"<!--\s*hfdistill:card:end\s*-->")


@dataclass(frozen=True)
class MergedCard:
    """A card merged into an existing one; `body` says what happened to the existing text."""

    text: str
    body: Literal["new", "section", "kept", "overwritten"]


def _merge_metadata(existing: Mapping[str, Any], ours: Mapping[str, Any], *, license_given: bool) -> dict[str, Any]:
    merged = dict(existing)
    for key, value in ours.items():
        if key not in merged or merged[key] in (None, [], ""):
            merged[key] = value
        elif key in _MERGED_LISTS:
            have = merged[key] if isinstance(merged[key], list) else [merged[key]]
            merged[key] = have + [v for v in value if v not in have]
        elif key == "size_categories" or (key == "license" and license_given):
            merged[key] = value
    # push_to_hub's long blocks last, so the keys people read come first in the YAML
    return {k: merged[k] for k in sorted(merged, key=lambda k: k in _TAIL_KEYS)}


def _merge_body(existing: str, generated: str, *, overwrite: bool) -> tuple[str, str]:
    if overwrite:
        return generated, "overwritten"
    if not existing.strip():
        return generated, "new"
    begin, end = _BEGIN_RE.search(existing), _END_RE.search(existing)
    if begin and end and begin.start() < end.start():
        return existing[:begin.start()] + generated + existing[end.end():], "section"
    return existing, "kept"


def merge_card(existing: str | None, record: GenerationRecord, sample: Mapping[str, Any] | None, *,
               repo_id: str | None = None, license: str | None = None, overwrite: bool = False) -> MergedCard:
    """Our card merged into `existing` (a README's text, None if there is none); see the module docstring."""
    if existing is None or not existing.strip():
        return MergedCard(build_card(record, sample, repo_id=repo_id, license=license), "new")
    existing_meta, existing_text = _split_card(existing)
    meta = _merge_metadata(existing_meta, card_metadata(record, license=license), license_given=bool(license))
    body = card_body(record, sample, repo_id=repo_id, license=str(meta.get("license")))
    text, what = _merge_body(existing_text, body, overwrite=overwrite)
    return MergedCard(render_card(meta, text), what)  # type: ignore[arg-type]


def _split_card(existing: str) -> tuple[dict[str, Any], str]:
    """A README's metadata and text. One without a YAML block is all text: parsing it with
    `DatasetCard` would log "Repo card metadata block was not found" at the user."""
    if not REGEX_YAML_BLOCK.search(existing):
        return {}, existing
    try:
        card = DatasetCard(existing)
    except (ValueError, TypeError) as e:  # the YAML block is not a mapping, or not YAML at all
        raise InputError(f"the existing README.md has invalid metadata ({e}); fix its YAML block") from None
    return card.data.to_dict(), card.text


def write_card(path: str | Path, out: str | Path, *, repo_id: str | None = None, license: str | None = None,
               overwrite: bool = False) -> MergedCard:
    """Write the card of output file `path` to `out`, merged into `out` if it exists (as a push would)."""
    record, sample = load_card_inputs(path)
    target = Path(out)
    try:
        existing = target.read_text(encoding="utf-8-sig") if target.exists() else None
        merged = merge_card(existing, record, sample, repo_id=repo_id, license=license, overwrite=overwrite)
        atomic_write_text(target, merged.text)
    except OSError as e:
        raise ConfigError(f"cannot write the card to {target} ({e.strerror or e}); choose another -o path") from None
    return merged
