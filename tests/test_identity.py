"""A run's identity: the options fingerprint, the existing-output check (item ids: tests/test_items.py)."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from hfdistill.core.config import DistillConfig
from hfdistill.core.errors import ConfigError
from hfdistill.run.identity import identify, rollout_options


def test_the_fingerprint_is_the_rollout_options_only() -> None:
    config = DistillConfig()
    base = identify(rollout_options(config, templates={"t": "1"}, corpus=None), Path("o.parquet"))
    moved = DistillConfig(vllm_url="http://elsewhere:9/v1", retrieval_url="http://x:1/retrieve")
    assert identify(rollout_options(moved, templates={"t": "1"}, corpus=None), Path("o.parquet")) == base
    for changed in (rollout_options(config.replace(temperature=0.1), templates={"t": "1"}, corpus=None),
                    rollout_options(config, templates={"t": "2"}, corpus=None),
                    rollout_options(config, templates={"t": "1"}, corpus="sha-of-another-corpus")):
        assert identify(changed, Path("o.parquet")).fingerprint != base.fingerprint


def test_an_output_not_written_by_hfdistill_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    datasets.Dataset.from_list([{"a": 1}]).to_parquet(str(out))
    identity = identify(rollout_options(DistillConfig(), templates={}, corpus=None), out)
    with pytest.raises(ConfigError, match="not written by hfdistill"):
        identity.existing("digest", {}, overwrite=False)
    assert identity.existing("digest", {}, overwrite=True) is None and not out.exists()


def test_judge_options_are_not_rollout_options() -> None:
    from hfdistill.core.config import JudgeConfig

    plain = DistillConfig()
    judged = plain.replace(judge=JudgeConfig(url="http://judge:8000/v1", model="big-judge"))
    assert rollout_options(judged, templates={}, corpus=None) == rollout_options(plain, templates={}, corpus=None)
