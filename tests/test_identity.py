"""Identity by content: item ids from what is sent, the options fingerprint, the existing-output check."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from hfdistill.core.config import DistillConfig
from hfdistill.core.errors import ConfigError
from hfdistill.run.identity import identify, rollout_options, scan_items
from hfdistill.run.inputs import plan_fields


def _items(rows: list[dict], *, with_golden: bool = False) -> list[str | None]:
    ds = datasets.Dataset.from_list(rows)
    return scan_items(ds, plan_fields(ds.features), with_golden=with_golden).ids


def test_item_ids_follow_content_and_occurrence_not_position() -> None:
    a, b = {"question": "A?", "golden_answers": ["x"]}, {"question": "B?", "golden_answers": ["y"]}
    ids = _items([a, b, a, {"question": "  ", "golden_answers": ["z"]}])
    assert ids[0] != ids[1] and ids[3] is None
    assert ids[2] != ids[0] and ids[2].split(".")[0] == ids[0].split(".")[0]  # a repeat: same content, next occurrence
    assert _items([b, a]) == [ids[1], ids[0]]  # reordered: each question keeps its id


@pytest.mark.parametrize(("with_golden", "same"), [(False, True), (True, False)])
def test_golden_answers_count_only_when_a_template_sends_them(with_golden: bool, same: bool) -> None:
    first = _items([{"question": "A?", "golden_answers": ["x"]}], with_golden=with_golden)
    fixed = _items([{"question": "A?", "golden_answers": ["x", "X"]}], with_golden=with_golden)
    assert (first == fixed) is same


def test_the_digest_covers_the_questions_in_order() -> None:
    rows = [{"question": f"Q{i}?"} for i in range(3)]
    digest = lambda rs: scan_items(datasets.Dataset.from_list(rs), plan_fields({"question": 0}),  # noqa: E731
                                   with_golden=False).digest
    assert digest(rows) == digest([dict(r) for r in rows])
    assert digest(rows) != digest(rows[:2]) != digest(rows[::-1])


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
