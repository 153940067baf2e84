"""Answer scoring as Search-R1 / verl do it: normalise, then exact match, sub-match and token F1."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Score", "exact_match", "f1_score", "normalize_answer", "score", "sub_match"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


@dataclass(frozen=True, slots=True)
class Score:
    """Scores of one prediction; all None when there are no golden answers to compare with."""

    exact_match: bool | None
    sub_match: bool | None
    f1: float | None


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD style)."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golden: Sequence[str]) -> bool:
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(g) for g in golden)


def sub_match(prediction: str, golden: Sequence[str]) -> bool:
    pred = normalize_answer(prediction)
    return any(g and g in pred for g in map(normalize_answer, golden))


def f1_score(prediction: str, golden: Sequence[str]) -> float:
    """Best token-level F1 of the prediction against any golden answer."""
    return _f1(normalize_answer(prediction), [normalize_answer(g) for g in golden])


def _f1(pred: str, golds: Sequence[str]) -> float:
    pred_tokens = Counter(pred.split())
    best = 0.0
    for gold in golds:
        gold_tokens = Counter(gold.split())
        common = sum((pred_tokens & gold_tokens).values())
        if common == 0:
            continue
        precision, recall = common / sum(pred_tokens.values()), common / sum(gold_tokens.values())
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def score(prediction: str, golden: Sequence[str]) -> Score:
    """All three scores, normalising each text once."""
    if not golden:
        return Score(exact_match=None, sub_match=None, f1=None)
    pred = normalize_answer(prediction)
    golds = [normalize_answer(g) for g in golden]
    return Score(exact_match=pred in golds, sub_match=any(g and g in pred for g in golds), f1=_f1(pred, golds))
