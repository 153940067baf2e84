"""Search-R1 / verl answer scoring (docs/curation.md)."""

from __future__ import annotations

import pytest

from hfdistill.core.scoring import exact_match, f1_score, normalize_answer, score, sub_match


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        pytest.param("Paris", "paris", id="lower"),
        pytest.param("The Eiffel Tower", "eiffel tower", id="article-the"),
        pytest.param("a cat and an owl", "cat and owl", id="articles-a-an"),
        pytest.param("U.S.A.", "usa", id="punctuation"),
        pytest.param("  many   spaces\there ", "many spaces here", id="whitespace"),
        pytest.param("theatre", "theatre", id="article-inside-word-kept"),
        pytest.param("Haya bint Hussein!", "haya bint hussein", id="trailing-punct"),
        pytest.param("", "", id="empty"),
    ],
)
def test_normalize_answer(raw: str, normalized: str) -> None:
    assert normalize_answer(raw) == normalized


@pytest.mark.parametrize(
    ("prediction", "golden", "em", "sub", "f1"),
    [
        pytest.param("Paris", ["paris"], True, True, 1.0, id="case"),
        pytest.param("the Paris.", ["Paris"], True, True, 1.0, id="article-and-punct"),
        pytest.param("Paris, France", ["Paris"], False, True, 2 / 3, id="submatch"),
        pytest.param("Lyon", ["Paris", "Lyon"], True, True, 1.0, id="any-golden"),
        pytest.param("Berlin", ["Paris"], False, False, 0.0, id="wrong"),
        pytest.param("", ["Paris"], False, False, 0.0, id="empty-prediction"),
    ],
)
def test_scores(prediction: str, golden: list[str], em: bool, sub: bool, f1: float) -> None:
    assert exact_match(prediction, golden) is em
    assert sub_match(prediction, golden) is sub
    assert f1_score(prediction, golden) == pytest.approx(f1)


def test_no_golden_answers_means_no_score() -> None:
    s = score("Paris", [])
    assert (s.exact_match, s.sub_match, s.f1) == (None, None, None)
