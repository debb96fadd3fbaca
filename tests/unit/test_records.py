"""The records `streams` writes to its own topics (streams.records): work record identity,
derivation, the wire round trip, splitting to fit a topic, and run event ids."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.records import (
    RunEvent,
    WorkItem,
    WorkRecord,
    batch_accepted,
    entities_errored,
    entities_requeued,
    entities_settled,
    fit,
    sealed,
)


def items(count: int, size: int = 10, prefix: str = "e") -> tuple[WorkItem, ...]:
    return tuple(WorkItem(f"{prefix}{i}", "dcim.site", {"site": {"name": f"{prefix}{i}", "pad": "x" * size}})
                 for i in range(count))


def record(count: int = 3, **kwargs: Any) -> WorkRecord:
    return WorkRecord("run-1", 7, items(count), **kwargs)


# --- identity -------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "work_id"), [
    ({}, "run-1/7/1"),
    ({"attempt": 3}, "run-1/7/3"),
    ({"replay_id": "rp1"}, "run-1/7/1/rrp1"),
    ({"attempt": 2, "replay_id": "rp1"}, "run-1/7/2/rrp1"),
    ({"replay_id": ""}, "run-1/7/1"),
    ({"id": "explicit"}, "explicit"),
    ({"id": "explicit", "attempt": 5, "replay_id": "rp"}, "explicit"),
])
def test_work_id_is_the_explicit_id_or_the_default(kwargs: dict[str, Any], work_id: str) -> None:
    assert record(**kwargs).work_id == work_id


def test_derived_adds_its_suffix_to_the_parents_id() -> None:
    parent = record(id="w1")
    child = parent.derived("+t0", parent.items[:1])
    assert child.work_id == "w1+t0"
    assert child.id == "w1+t0"
    assert (child.run_id, child.batch, child.items) == ("run-1", 7, parent.items[:1])


def test_derived_from_a_record_without_an_id_builds_on_the_default() -> None:
    assert record(attempt=2).derived("+d", ()).work_id == "run-1/7/2+d"


@pytest.mark.parametrize(("attempt", "expected"), [(None, 4), (5, 5), (1, 1)])
def test_derived_keeps_the_attempt_unless_given(attempt: int | None, expected: int) -> None:
    assert record(attempt=4, id="w").derived("+x", (), attempt=attempt).attempt == expected


@pytest.mark.parametrize(("parent_replay", "given", "expected"), [
    (None, None, None), ("rp", None, "rp"), ("rp", "new", "new"), (None, "new", "new")])
def test_derived_keeps_the_replay_id_unless_given(parent_replay: str | None, given: str | None,
                                                  expected: str | None) -> None:
    parent = record(id="w", replay_id=parent_replay)
    assert parent.derived("+x", (), replay_id=given).replay_id == expected


def test_derived_errors_are_the_given_ones_not_the_parents() -> None:
    parent = record(id="w", errors={"e0": {"class": "transient"}})
    assert parent.derived("+x", ()).errors == {}
    assert parent.derived("+x", (), errors={"e1": "why"}).errors == {"e1": "why"}


def test_derived_twice_gives_the_same_id() -> None:
    parent = record(id="w")
    assert parent.derived("+t1", ()).work_id == parent.derived("+t1", ()).work_id
    assert parent.derived("+t1", ()).derived("+p0", ()).work_id == "w+t1+p0"


# --- encode / decode ------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {},
    {"id": "w1"},
    {"replay_id": "rp"},
    {"errors": {"e0": {"class": "permanent", "message": "no"}}},
    {"attempt": 3, "replay_id": "rp", "errors": {"e1": "x"}, "id": "w1+t2"},
])
def test_encode_and_decode_round_trip(kwargs: dict[str, Any]) -> None:
    original = record(**kwargs)
    again = WorkRecord.decode(original.encode())
    assert again.work_id == original.work_id
    assert (again.run_id, again.batch, again.items, again.attempt, again.replay_id, again.errors) == (
        original.run_id, original.batch, original.items, original.attempt, original.replay_id, original.errors)
    assert all(isinstance(i, WorkItem) for i in again.items)


def test_encode_always_writes_the_work_id_and_only_the_optional_fields_set() -> None:
    raw = orjson.loads(record(1).encode())
    assert raw == {"run_id": "run-1", "batch": 7, "attempt": 1, "work_id": "run-1/7/1",
                   "items": [{"id": "e0", "object_type": "dcim.site", "entity": {"site": {"name": "e0", "pad": "x" * 10}}}]}
    full = orjson.loads(record(1, replay_id="rp", errors={"e0": 1}).encode())
    assert full["replay_id"] == "rp" and full["errors"] == {"e0": 1}


def test_a_decoded_default_id_becomes_explicit() -> None:
    # The id travels: a record decoded keeps the id it was sent with, whatever its attempt says.
    again = WorkRecord.decode(record(attempt=2).encode())
    assert again.id == "run-1/7/2"


@pytest.mark.parametrize(("raw", "work_id", "attempt"), [
    ({"run_id": "r", "batch": 1, "items": []}, "r/1/1", 1),  # an older record: no work_id, no attempt
    ({"run_id": "r", "batch": "2", "attempt": "3", "items": []}, "r/2/3", 3),
    ({"run_id": "r", "batch": 1, "items": [], "work_id": 12}, "r/1/1", 1),  # not a string: ignored
    ({"run_id": "r", "batch": 1, "items": [], "work_id": "given", "errors": None}, "given", 1),
])
def test_decode_of_older_or_odd_records(raw: dict[str, Any], work_id: str, attempt: int) -> None:
    decoded = WorkRecord.decode(orjson.dumps(raw))
    assert decoded.work_id == work_id
    assert decoded.attempt == attempt
    assert decoded.errors == {}
    assert isinstance(decoded.batch, int)


# --- fit ------------------------------------------------------------------------------------


def test_a_record_that_fits_is_returned_itself() -> None:
    whole = record(5, id="w")
    assert fit(whole, len(whole.encode())) == [whole]
    assert fit(whole, len(whole.encode()))[0] is whole


@pytest.mark.parametrize("count", [0, 1])
def test_a_single_item_is_never_split(count: int) -> None:
    alone = WorkRecord("r", 0, items(count, size=5000), id="w")
    assert fit(alone, 10) == [alone]


@pytest.mark.parametrize("count", [2, 3, 7, 16, 33])
@pytest.mark.parametrize("budget", [1, 300, 700, 2000])
def test_fit_splits_into_parts_under_the_budget_each_item_once_in_order(count: int, budget: int) -> None:
    errors = {f"e{i}": {"why": i} for i in range(0, count, 2)}
    whole = WorkRecord("r", 0, items(count, size=100), attempt=2, replay_id="rp", errors=errors, id="w")
    parts = fit(whole, budget)
    assert [i for p in parts for i in p.items] == list(whole.items)
    assert len({p.work_id for p in parts}) == len(parts)
    for part in parts:
        assert len(part.items) == 1 or len(part.encode()) <= budget
        assert part.errors == {i.id: errors[i.id] for i in part.items if i.id in errors}
        assert (part.run_id, part.batch, part.attempt, part.replay_id) == ("r", 0, 2, "rp")
        if len(parts) > 1:
            assert part.work_id.startswith("w+p")


def test_fit_names_parts_by_halving() -> None:
    whole = WorkRecord("r", 0, items(4, size=300), id="w")
    parts = fit(whole, 1)
    assert [p.work_id for p in parts] == ["w+p0+p0", "w+p0+p1", "w+p1+p0", "w+p1+p1"]
    halves = fit(whole, len(whole.derived("+p0", whole.items[:2]).encode()))
    assert [p.work_id for p in halves] == ["w+p0", "w+p1"]


def test_fit_is_deterministic() -> None:
    whole = WorkRecord("r", 0, items(11, size=200), id="w")
    assert fit(whole, 900) == fit(whole, 900)


def test_an_odd_count_puts_the_extra_item_in_the_second_half() -> None:
    whole = WorkRecord("r", 0, items(5, size=300), id="w")
    first, *_ = fit(whole, len(whole.encode()) - 1)
    assert [i.id for i in first.items] == ["e0", "e1"]


def test_a_part_holding_one_oversized_item_is_kept_whole() -> None:
    big = WorkItem("big", "dcim.site", {"site": {"pad": "x" * 5000}})
    whole = WorkRecord("r", 0, (*items(2), big), id="w")
    parts = fit(whole, 600)
    assert [p.items for p in parts if big in p.items] == [(big,)]
    assert [i for p in parts for i in p.items] == list(whole.items)


# --- run events -----------------------------------------------------------------------------


def test_batch_accepted() -> None:
    event = batch_accepted("run-1", 4, entities=10, new=7, duplicates=3, producer={"app_name": "x"})
    assert event == RunEvent("batch_accepted", "accepted:run-1:4", "run-1", 4,
                             {"entities": 10, "new": 7, "duplicates": 3}, {"app_name": "x"})


def test_sealed() -> None:
    assert sealed("run-1", 12) == RunEvent("sealed", "sealed:run-1", "run-1", None, {"batches": 12})


@pytest.mark.parametrize(("work", "event_id"), [
    (WorkRecord("run-1", 2, ()), "settled:run-1/2/1"),
    (WorkRecord("run-1", 2, (), attempt=3, replay_id="rp"), "settled:run-1/2/3/rrp"),
    (WorkRecord("run-1", 2, (), id="w+t1+p0"), "settled:w+t1+p0"),
])
def test_entities_settled_is_identified_by_the_records_work_id(work: WorkRecord, event_id: str) -> None:
    event = entities_settled(work, {"applied": 3})
    assert (event.type, event.event_id, event.run_id, event.batch, event.counts) == (
        "entities_settled", event_id, "run-1", 2, {"applied": 3})


def test_entities_errored_is_identified_by_the_work_id() -> None:
    event = entities_errored("run-1", 2, work_id="w+dpermanent", errored=4)
    assert event == RunEvent("entities_errored", "errored:w+dpermanent", "run-1", 2, {"errored": 4})


def test_entities_requeued_is_identified_by_replay_and_dlq_position() -> None:
    event = entities_requeued("run-1", 2, replay_id="rp", partition=3, offset=41, requeued=5, retry_in=2)
    assert event == RunEvent("entities_requeued", "requeued:rp:3:41", "run-1", 2, {"requeued": 5, "retry_in": 2})


def test_two_facts_never_share_an_event_id() -> None:
    events = [batch_accepted("r", 1, entities=1, new=1, duplicates=0, producer=None), sealed("r", 1),
              entities_settled(WorkRecord("r", 1, ()), {}), entities_errored("r", 1, work_id="r/1/1", errored=1),
              entities_requeued("r", 1, replay_id="x", partition=0, offset=0, requeued=1, retry_in=0),
              batch_accepted("r", 2, entities=1, new=1, duplicates=0, producer=None)]
    assert len({e.event_id for e in events}) == len(events)


@pytest.mark.parametrize("event", [
    batch_accepted("run-1", 4, entities=10, new=7, duplicates=3, producer={"app_name": "x", "app_version": "1"}),
    batch_accepted("run-1", 4, entities=1, new=1, duplicates=0, producer=None),
    sealed("run-1", 0),
    entities_settled(WorkRecord("run-1", 2, (), id="w"), {"applied": 1, "retry_in": 2}),
    entities_errored("run-1", 2, work_id="w", errored=1),
    entities_requeued("run-1", 2, replay_id="rp", partition=0, offset=9, requeued=1, retry_in=1),
])
def test_run_events_round_trip(event: RunEvent) -> None:
    assert RunEvent.decode(event.encode()) == event


def test_encode_leaves_out_what_is_none() -> None:
    raw = orjson.loads(sealed("run-1", 3).encode())
    assert raw == {"type": "sealed", "event_id": "sealed:run-1", "run_id": "run-1", "counts": {"batches": 3}}
