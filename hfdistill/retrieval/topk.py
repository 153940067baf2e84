"""k-selection over a matrix of scores (queries x passages), in torch, on whichever device holds it.

Over a wiki-sized index the selection, not the matrix product, is where GPU time goes: `torch.topk`
over a (512 x 2M) score chunk takes about three times as long as computing it. `group_topk`
selects in two stages instead: the maximum of each group of `group` consecutive scores (a plain
reduction, as fast as reading the scores once), the k best groups by that maximum (a `topk` over
`group` times fewer values), then the k best of those groups' scores. It returns what `topk` would,
ties aside: the k best groups by maximum hold the k best scores, because each of those k scores
sits in a group whose maximum is at least as high.
"""

from __future__ import annotations

import torch

__all__ = ["SELECTIONS", "group_topk", "select", "topk"]

SELECTIONS = ("group", "topk")


def topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain `torch.topk` along the passages: (values, indices), best first."""
    return scores.topk(min(k, scores.shape[1]), dim=1)


def group_topk(scores: torch.Tensor, k: int, group: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The same as `topk(scores, k)` (ties aside), selecting in two stages (see the module docstring)."""
    rows, n = scores.shape
    groups = n // group
    if groups <= k:  # too few groups to save anything
        return topk(scores, k)
    main = groups * group
    maxima = scores[:, :main].view(rows, groups, group).amax(dim=2)
    best_groups = maxima.topk(k, dim=1).indices  # (rows, k)
    offsets = torch.arange(group, device=scores.device)
    candidates = (best_groups[:, :, None] * group + offsets).view(rows, k * group)
    if main < n:  # the scores past the last whole group are always candidates
        tail = torch.arange(main, n, device=scores.device).expand(rows, n - main)
        candidates = torch.cat([candidates, tail], dim=1)
    values, picked = scores.gather(1, candidates).topk(k, dim=1)
    return values, candidates.gather(1, picked)


def select(scores: torch.Tensor, k: int, method: str = "group", group: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """k-selection by `method`: `group` (two stages) or `topk` (one)."""
    if method == "group":
        return group_topk(scores, k, group)
    if method == "topk":
        return topk(scores, k)
    raise ValueError(f"unknown k-selection {method!r}; expected one of {', '.join(SELECTIONS)}")
