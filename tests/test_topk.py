"""The two-stage k-selection returns what torch.topk returns (distinct scores: no ties to break)."""

from __future__ import annotations

import pytest
import torch

from hfdistill.retrieval.topk import group_topk, select, topk


@pytest.mark.parametrize(("rows", "n", "k", "group"), [
    pytest.param(4, 100_000, 3, 256, id="typical"),
    pytest.param(7, 100_003, 10, 256, id="a-tail-past-the-last-group"),
    pytest.param(3, 5_000, 50, 128, id="deep-k"),
    pytest.param(2, 1_000, 3, 1024, id="fewer-groups-than-k-falls-back"),
    pytest.param(1, 4_096, 1, 64, id="one-query-k-1"),
    pytest.param(5, 300, 300, 16, id="k-is-everything"),
])
def test_group_topk_equals_topk(rows: int, n: int, k: int, group: int) -> None:
    scores = torch.randn(rows, n, generator=torch.Generator().manual_seed(n + k))
    want, got = topk(scores, k), group_topk(scores, k, group)
    assert torch.equal(got[1], want.indices) and torch.equal(got[0], want.values)


def test_the_best_scores_all_in_one_group_are_found() -> None:
    scores = torch.zeros(2, 10_000)
    scores[:, 512:515] = torch.tensor([3.0, 2.0, 1.0])  # the three best share a group of 256
    assert group_topk(scores, 3)[1].tolist() == [[512, 513, 514]] * 2


def test_half_precision_scores() -> None:
    scores = torch.randn(3, 20_000, generator=torch.Generator().manual_seed(1)).half()
    assert set(group_topk(scores, 5)[1][0].tolist()) == set(topk(scores, 5).indices[0].tolist())


def test_select_names_its_methods() -> None:
    scores = torch.randn(2, 1000)
    assert torch.equal(select(scores, 3, "group")[1], select(scores, 3, "topk")[1])
    with pytest.raises(ValueError, match="unknown k-selection 'heap'"):
        select(scores, 3, "heap")
