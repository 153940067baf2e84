"""The turn store of the Ray engine, as plain Python: claims, order, batches, taking and dropping."""

from __future__ import annotations

from hfdistill.engines.turns import TurnReport, TurnStore


def _turn(slot: tuple[int, int], number: int) -> TurnReport:
    return TurnReport(slot, number, {"n": number}, "m", "chat")


def test_the_claimant_adds_turns_in_order_and_the_driver_takes_each_once() -> None:
    store = TurnStore()
    assert store.claim("a", {(0, 0): 0, (1, 0): 2}) == {}
    assert store.put("a", [_turn((0, 0), 1)])
    assert not store.put("a", [_turn((0, 0), 3)])  # a gap
    assert not store.put("a", [_turn((1, 0), 1)])  # the driver holds turns 1 and 2 already
    assert store.put("a", [_turn((1, 0), 3)])
    assert [(t.slot, t.number) for t in store.take().turns] == [((0, 0), 1), ((1, 0), 3)]
    assert store.take().turns == []


def test_a_retried_rollout_continues_from_the_earlier_attempts_turns_and_silences_it() -> None:
    store = TurnStore()
    store.claim("lost", {(0, 0): 1})
    assert store.put("lost", [_turn((0, 0), 2)]) and store.put("lost", [_turn((0, 0), 3)])
    later = store.claim("retry", {(0, 0): 1})
    assert [t.number for t in later[(0, 0)]] == [2, 3]
    assert not store.put("lost", [_turn((0, 0), 4)])  # the node it ran on is gone; its late turns are not kept
    assert store.put("retry", [_turn((0, 0), 4)])
    assert [t.number for t in store.take().turns] == [2, 3, 4]


def test_recorded_rollouts_are_dropped_and_refuse_late_turns() -> None:
    store = TurnStore()
    store.claim("a", {(0, 0): 0, (1, 0): 0})
    store.put("a", [_turn((0, 0), 1)])
    store.put("a", [_turn((1, 0), 1)])
    assert [t.slot for t in store.take([(0, 0)]).turns] == [(1, 0)]
    assert not store.put("a", [_turn((0, 0), 2)])
    assert [t.number for t in store.claim("b", {(1, 0): 0})[(1, 0)]] == [1]  # the other rollout is still held
    assert store.claim("b", {(0, 0): 0}) == {}  # nothing of the first attempt is handed back


def test_a_batch_of_reports_keeps_those_in_order_and_counts_them() -> None:
    store = TurnStore()
    store.claim("a", {(0, 0): 0, (1, 0): 0})
    batch = [_turn((0, 0), 1), _turn((1, 0), 1), _turn((0, 0), 2), _turn((0, 0), 4), _turn((2, 0), 1)]
    assert store.put("a", batch) == 3  # turn 4 leaves a gap; (2, 0) was never claimed
    assert [(t.slot, t.number) for t in store.take().turns] == [((0, 0), 1), ((1, 0), 1), ((0, 0), 2)]


def test_calls_are_kept_whoever_sends_them_and_taken_once() -> None:
    store = TurnStore()
    store.claim("new", {(0, 0): 0})
    store.put("old", [_turn((0, 0), 1)], {"calls": 3})  # a superseded actor's calls still reached the server
    store.put("new", [], {"calls": 2})
    taken = store.take()
    assert (taken.turns, taken.calls) == ([], [{"calls": 3}, {"calls": 2}])
    assert store.take().calls == []
