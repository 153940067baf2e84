"""Merging our card into an existing README: push_to_hub's metadata, the user's keys and hand-written
text are kept; the marked section is refreshed; a license or overwrite is honoured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import DatasetCard

from hfdistill.publish.card import BEGIN_MARKER, load_card_inputs
from hfdistill.publish.merge import merge_card
from tests.fake_hub import metadata_errors
from tests.fakes import FakeRetriever, FakeTeacher, Served
from tests.test_card import CONFIGS, distill


@pytest.fixture
def distilled(tmp_path: Path, teacher: tuple[FakeTeacher, Served], retriever: tuple[FakeRetriever, Served],
              real_layout: Path) -> Path:
    return distill(tmp_path, teacher, retriever, real_layout)


def _metadata(text: str) -> dict[str, Any]:
    return DatasetCard(text).data.to_dict()


EXISTING = """---
pretty_name: My search traces
license: apache-2.0
tags:
- my-tag
dataset_info:
  features:
  - name: question
    dtype: string
  splits:
  - name: train
    num_examples: 3
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---

# My search traces

Written by hand: these traces feed our agent experiments.
"""


def test_merge_keeps_push_to_hub_metadata_user_keys_and_hand_written_text(distilled: Path) -> None:
    record, sample = load_card_inputs(distilled)
    merged = merge_card(EXISTING, record, sample, repo_id="me/x")
    meta = _metadata(merged.text)
    assert merged.body == "kept"
    assert DatasetCard(merged.text).text == DatasetCard(EXISTING).text
    assert meta["dataset_info"] == _metadata(EXISTING)["dataset_info"]
    assert meta["configs"] == CONFIGS
    assert meta["pretty_name"] == "My search traces"
    assert meta["license"] == "apache-2.0"  # the user's choice wins over the placeholder
    assert meta["tags"][0] == "my-tag" and "distillation" in meta["tags"]
    assert meta["size_categories"] == ["n<1K"] and meta["task_categories"] == ["text-generation"]
    assert list(meta)[-2:] == ["dataset_info", "configs"]
    assert metadata_errors(merged.text) == []


def test_merge_with_an_explicit_license_and_overwrite(distilled: Path) -> None:
    record, sample = load_card_inputs(distilled)
    merged = merge_card(EXISTING, record, sample, license="mit", overwrite=True)
    assert merged.body == "overwritten"
    assert _metadata(merged.text)["license"] == "mit"
    assert "Written by hand" not in merged.text and "## Statistics" in merged.text
    assert _metadata(merged.text)["dataset_info"]


def test_merge_refreshes_only_the_marked_section(distilled: Path) -> None:
    record, sample = load_card_inputs(distilled)
    first = merge_card(EXISTING, record, sample, overwrite=True).text
    edited = first.replace(BEGIN_MARKER, "Intro by hand.\n\n" + BEGIN_MARKER) + "\nOutro by hand.\n"
    edited = edited.replace("## Statistics", "## Stale statistics")
    merged = merge_card(edited, record, sample)
    assert merged.body == "section"
    assert "Intro by hand." in merged.text and "Outro by hand." in merged.text
    assert "## Statistics" in merged.text and "Stale" not in merged.text


def test_merge_into_nothing_or_metadata_only(distilled: Path) -> None:
    record, sample = load_card_inputs(distilled)
    assert merge_card(None, record, sample).body == "new"
    only_meta = "---\nconfigs:\n- config_name: default\n  data_files: data/*\n---\n"
    merged = merge_card(only_meta, record, sample)
    assert merged.body == "new" and "## Statistics" in merged.text
    assert _metadata(merged.text)["configs"] == [{"config_name": "default", "data_files": "data/*"}]


