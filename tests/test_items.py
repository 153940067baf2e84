"""Item ids by content and occurrence, kept compactly; rollout slots in output order."""

from __future__ import annotations

import hashlib
import json

import datasets
import numpy as np
import pytest

from hfdistill.run.inputs import plan_fields
from hfdistill.run.items import InputItems, RolloutSlots, scan_items

A, B = {"question": "A?", "golden_answers": ["x"]}, {"question": "B?", "golden_answers": ["y"]}
BLANK = {"question": "  ", "golden_answers": ["z"]}


def _items(rows: list[dict], *, with_golden: bool = False) -> InputItems:
    ds = datasets.Dataset.from_list(rows)
    return scan_items(ds, plan_fields(ds.features), with_golden=with_golden)


def _ids(rows: list[dict], *, with_golden: bool = False) -> list[str | None]:
    items = _items(rows, with_golden=with_golden)
    return [items.item(i) for i in range(len(items))]


def _content(question: str, golden: list[str]) -> str:
    """An id's content part as hfdistill has always written it into journals (20 hex digits of a sha256)."""
    return hashlib.sha256(json.dumps([question, golden], ensure_ascii=False).encode()).hexdigest()[:20]


def test_item_ids_follow_content_and_occurrence_not_position() -> None:
    ids = _ids([A, B, A, BLANK])
    assert ids == [f"{_content('A?', [])}.0", f"{_content('B?', [])}.0", f"{_content('A?', [])}.1", None]
    assert _ids([B, A]) == [ids[1], ids[0]]  # reordered: each question keeps its id


@pytest.mark.parametrize(("with_golden", "same"), [(False, True), (True, False)])
def test_golden_answers_count_only_when_a_template_sends_them(with_golden: bool, same: bool) -> None:
    first = _ids([{"question": "A?", "golden_answers": ["x"]}], with_golden=with_golden)
    fixed = _ids([{"question": "A?", "golden_answers": ["x", "X"]}], with_golden=with_golden)
    assert (first == fixed) is same


def test_the_digest_covers_the_ids_in_order_as_earlier_versions_wrote_it() -> None:
    rows = [{"question": f"Q{i}?"} for i in range(3)] + [{"question": ""}, {"question": "Q0?"}]
    digest = lambda rs: _items(rs).digest  # noqa: E731
    lines = [f"{_content(f'Q{i}?', [])}.0\n" for i in range(3)] + ["-\n", f"{_content('Q0?', [])}.1\n"]
    assert digest(rows) == hashlib.sha256("".join(lines).encode()).hexdigest()  # outputs of older runs stay complete
    assert digest(rows) != digest(rows[:2]) != digest(rows[::-1])


@pytest.mark.parametrize(("item", "found"), [
    pytest.param(f"{_content('A?', [])}.1", 2, id="second-occurrence"),
    pytest.param(f"{_content('B?', [])}.0", 1, id="first-occurrence"),
    pytest.param(f"{_content('A?', [])}.2", None, id="no-third-occurrence"),
    pytest.param(f"{_content('C?', [])}.0", None, id="another-question"),
    pytest.param(f"{_content('A?', [])}.01", None, id="not-canonical"),
    pytest.param(f"{_content('A?', [])}", None, id="no-occurrence"),
    pytest.param("item3.0", None, id="not-a-digest"),
    pytest.param("", None, id="empty"),
])
def test_a_row_is_found_by_its_id(item: str, found: int | None) -> None:
    assert _items([A, B, A, BLANK]).index_of(item) == found


def test_every_id_of_a_large_input_finds_its_own_row() -> None:
    rows = [{"question": f"Q{i % 700}?"} for i in range(3000)] + [{"question": ""}] * 5
    items = _items(rows)
    found = [items.index_of(items.item(i)) for i in range(len(items) - 5)]
    assert found == list(range(len(items) - 5)) and items.blank == 5


def test_ids_are_a_few_bytes_per_row_in_arrays_not_python_objects() -> None:
    items = _items([{"question": f"Q{i}?"} for i in range(1000)])
    assert isinstance(items.keys, np.ndarray) and isinstance(items.order, np.ndarray)
    assert items.keys.nbytes + items.order.nbytes <= 19 * len(items)


def test_slots_are_the_output_order_and_blank_rows_owe_nothing() -> None:
    items = _items([A, BLANK, B])
    slots = RolloutSlots(items, 2)
    assert len(slots) == 6 and slots.owed().tolist() == [True, True, False, False, True, True]
    assert [slots.slot_of(slots.key_of(s)) for s in (0, 1, 4, 5)] == [0, 1, 4, 5]
    assert slots.key_of(5) == (items.item(2), 1)
    assert slots.slot_of((items.item(0), 2)) is None  # a rollout index this run does not make
    with pytest.raises(ValueError, match="no question"):
        slots.key_of(2)
