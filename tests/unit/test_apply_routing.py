"""Where each entity goes once the target answered (streams.pipeline.apply): done, a retry tier
or the dead-letter topic; the records that take it there; and what a record delivered again
finds an earlier delivery did."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from streams.db.apply_store import RoutedRow
from streams.models import Change, ChangeSet
from streams.pipeline.apply import (
    SUCCESS_NAMES,
    FailedGroup,
    Routing,
    dead_work,
    earlier,
    failure_from,
    is_free_retry,
    leaving,
    retry_work,
    route,
)
from streams.pipeline.outcomes import EntityOutcome, ErrorClass, Failure, RequestFault, State
from streams.records import WorkItem, WorkRecord

TIERS = (30.0, 300.0, 3600.0)
NOW = 1_700_000_000_000


def change_set(cs_id: str, *changes: tuple[str, str]) -> ChangeSet:
    return ChangeSet(id=cs_id, changes=tuple(
        Change(change_type=kind, object_type=object_type, object_id=seq or None,  # type: ignore[arg-type]
               before={"seq": seq} if seq else None, data={"name": f"n{seq}"})
        for seq, (kind, object_type) in enumerate(changes)))


def ok(entity_id: str, state: State = State.APPLIED, cs: ChangeSet | None = None,
       warnings: tuple[Any, ...] = ()) -> EntityOutcome:
    return EntityOutcome(entity_id, state, cs or change_set(f"cs-{entity_id}", ("create", "dcim.site")),
                         warnings=warnings)


def failed(entity_id: str, error_class: ErrorClass = ErrorClass.TRANSIENT, *, message: str = "boom",
           http_status: int | None = 200, retry_after: float | None = None, cs: ChangeSet | None = None,
           warnings: tuple[Any, ...] = ()) -> EntityOutcome:
    return EntityOutcome(entity_id, None, cs, Failure(error_class, message, http_status, retry_after), warnings)


def routed(*outcomes: EntityOutcome, attempt: int = 1) -> Routing:
    return route(outcomes, attempt=attempt, tiers=TIERS, now_ms=NOW)


def items(*ids: str, size: int = 10) -> tuple[WorkItem, ...]:
    return tuple(WorkItem(i, "dcim.site", {"site": {"name": i, "pad": "x" * size}}) for i in ids)


WORK = WorkRecord("run-1", 4, items("a", "b", "c", "d"), attempt=1, id="w1")


# --- route: successes ---------------------------------------------------------------------


def test_successes_are_done_with_their_states_in_order() -> None:
    routing = routed(ok("a"), ok("b", State.NO_CHANGES), ok("c"))
    assert routing.done_ids == ["a", "b", "c"]
    assert routing.done_states == [int(State.APPLIED), int(State.NO_CHANGES), int(State.APPLIED)]
    assert all(type(s) is int for s in routing.done_states)
    assert routing.retry == {} and routing.dead == {}


def test_an_empty_answer_routes_nothing() -> None:
    routing = routed()
    assert (routing.done_ids, routing.change_sets, routing.changes, routing.warnings) == ([], [], [], {})


def test_change_sets_and_every_change_are_recorded_with_their_sequence() -> None:
    cs = change_set("cs-1", ("create", "dcim.site"), ("update", "dcim.device"), ("noop", "ipam.prefix"))
    routing = routed(ok("a", cs=cs))
    assert routing.change_sets == [("cs-1", "a")]
    assert routing.changes == [
        ("cs-1", 0, "create", "dcim.site", None, None, {"name": "n0"}),
        ("cs-1", 1, "update", "dcim.device", 1, {"seq": 1}, {"name": "n1"}),
        ("cs-1", 2, "noop", "ipam.prefix", 2, {"seq": 2}, {"name": "n2"}),
    ]


def test_an_outcome_without_a_change_set_records_none() -> None:
    routing = routed(failed("a"))
    assert routing.change_sets == [] and routing.changes == []


def test_a_failure_that_carries_a_change_set_records_it_and_is_still_routed() -> None:
    cs = change_set("cs-f", ("create", "dcim.site"))
    routing = routed(failed("a", ErrorClass.PERMANENT, cs=cs))
    assert routing.change_sets == [("cs-f", "a")]
    assert routing.changes == [("cs-f", 0, "create", "dcim.site", None, None, {"name": "n0"})]
    assert routing.done_ids == []
    assert routing.dead[ErrorClass.PERMANENT].ids == ["a"]


def test_warnings_are_recorded_by_change_set_id() -> None:
    warning = {"fields": ["x"], "object_id": 3}
    routing = routed(ok("a", warnings=(warning,)), ok("b"),
                     failed("c", cs=change_set("cs-c"), warnings=("w",)))
    assert routing.warnings == {"cs-a": (warning,), "cs-c": ("w",)}


def test_warnings_without_a_change_set_are_not_recorded() -> None:
    assert routed(failed("a", warnings=("w",))).warnings == {}


# --- route: failures ------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "tier"), [(1, 0), (2, 1), (3, 2)])
def test_a_transient_failure_goes_to_the_tier_of_its_attempt(attempt: int, tier: int) -> None:
    routing = routed(failed("a"), attempt=attempt)
    assert list(routing.retry) == [tier]
    group = routing.retry[tier]
    assert group.ids == ["a"]
    assert group.due_at_ms == NOW + int(TIERS[tier] * 1000)
    assert routing.dead == {}


@pytest.mark.parametrize(("retry_after", "tier", "due"), [(31, 1, 300), (301, 2, 3600), (7200, 2, 7200), (5, 0, 30)])
def test_retry_after_picks_a_later_tier(retry_after: float, tier: int, due: float) -> None:
    routing = routed(failed("a", retry_after=retry_after))
    assert list(routing.retry) == [tier]
    assert routing.retry[tier].due_at_ms == NOW + int(due * 1000)


@pytest.mark.parametrize("error_class", [ErrorClass.PERMANENT, ErrorClass.INVALID])
@pytest.mark.parametrize("attempt", [1, 3, 4])
def test_permanent_and_invalid_failures_go_dead_by_class(error_class: ErrorClass, attempt: int) -> None:
    routing = routed(failed("a", error_class), failed("b", error_class), attempt=attempt)
    assert list(routing.dead) == [error_class]
    assert routing.dead[error_class].ids == ["a", "b"]
    assert routing.dead[error_class].due_at_ms == 0
    assert routing.retry == {}


@pytest.mark.parametrize("attempt", [4, 5])
def test_a_transient_failure_of_the_last_attempt_goes_dead(attempt: int) -> None:
    routing = routed(failed("a", retry_after=7200), attempt=attempt)
    assert routing.retry == {}
    assert routing.dead[ErrorClass.TRANSIENT].ids == ["a"]


def test_a_mixed_answer_is_split_by_destination() -> None:
    routing = routed(ok("a"), failed("b"), failed("c", ErrorClass.PERMANENT), failed("d", retry_after=400),
                     failed("e", ErrorClass.INVALID), ok("f", State.NO_CHANGES), failed("g"))
    assert routing.done_ids == ["a", "f"]
    assert {tier: g.ids for tier, g in routing.retry.items()} == {0: ["b", "g"], 2: ["d"]}
    assert {c: g.ids for c, g in routing.dead.items()} == {ErrorClass.PERMANENT: ["c"], ErrorClass.INVALID: ["e"]}


def test_a_group_is_due_when_its_latest_entity_is() -> None:
    routing = routed(failed("a", retry_after=3000), failed("b", retry_after=5000), failed("c", retry_after=4000))
    assert routing.retry[2].due_at_ms == NOW + 5_000_000


def test_a_group_keeps_each_entitys_error_as_json() -> None:
    routing = routed(failed("a", message="first", http_status=500), failed("b", message="second", http_status=None))
    group = routing.retry[0]
    assert group.errors == [{"class": "transient", "message": "first", "http_status": 500},
                            {"class": "transient", "message": "second"}]
    assert [f.message for f in group.failures] == ["first", "second"]


# --- FailedGroup ------------------------------------------------------------------------------


def group_of(*failures: Failure) -> FailedGroup:
    group = FailedGroup()
    for index, failure in enumerate(failures):
        group.add(f"e{index}", failure, due_at_ms=index)
    return group


@pytest.mark.parametrize(("count", "summary"), [
    (1, "m0"), (2, "m0 (and 1 more entities)"), (5, "m0 (and 4 more entities)")])
def test_summary_is_the_first_message_and_how_many_more(count: int, summary: str) -> None:
    group = group_of(*(Failure(ErrorClass.TRANSIENT, f"m{i}") for i in range(count)))
    assert group.summary == summary


@pytest.mark.parametrize(("statuses", "expected"), [
    ([500], 500), ([500, 500], 500), ([500, 503], None), ([None], None), ([None, 500], None), ([429] * 3, 429)])
def test_http_status_is_the_groups_one_status_or_none(statuses: list[int | None], expected: int | None) -> None:
    assert group_of(*(Failure(ErrorClass.TRANSIENT, "m", s) for s in statuses)).http_status == expected


def test_add_keeps_the_largest_due_time() -> None:
    group = FailedGroup()
    group.add("a", Failure(ErrorClass.TRANSIENT, "m"), 50)
    group.add("b", Failure(ErrorClass.TRANSIENT, "m"), 10)
    group.add("c", Failure(ErrorClass.TRANSIENT, "m"))
    assert group.due_at_ms == 50
    assert group.ids == ["a", "b", "c"]


# --- leaving --------------------------------------------------------------------------------


def test_leaving_makes_one_retry_record_per_tier_with_the_next_attempt() -> None:
    routing = routed(failed("a"), failed("b", retry_after=400), failed("c"))
    out = leaving(WORK, WORK.items, routing, budget=1_000_000)
    assert set(out.retries) == {0, 2}
    (tier0,), (tier2,) = out.retries[0], out.retries[2]
    assert tier0.work_id == "w1+t0" and tier2.work_id == "w1+t2"
    assert [i.id for i in tier0.items] == ["a", "c"] and [i.id for i in tier2.items] == ["b"]
    assert tier0.attempt == tier2.attempt == WORK.attempt + 1
    assert tier0.errors == {"a": {"class": "transient", "message": "boom", "http_status": 200},
                            "c": {"class": "transient", "message": "boom", "http_status": 200}}
    assert (tier0.run_id, tier0.batch) == ("run-1", 4)
    assert out.deads == []


def test_leaving_makes_dead_letters_per_class_with_the_attempt_unchanged() -> None:
    work = WorkRecord("run-1", 4, WORK.items, attempt=3, id="w3")
    routing = route([failed("a", ErrorClass.PERMANENT), failed("b", ErrorClass.INVALID), failed("c", message="x"),
                     ok("d")], attempt=4, tiers=TIERS, now_ms=NOW)  # attempt 4: transient goes dead
    out = leaving(work, work.items, routing, budget=1_000_000)
    assert out.retries == {}
    assert [(c, r.work_id, [i.id for i in r.items], r.attempt) for c, r in out.deads] == [
        (ErrorClass.PERMANENT, "w3+dpermanent", ["a"], 3),
        (ErrorClass.INVALID, "w3+dinvalid", ["b"], 3),
        (ErrorClass.TRANSIENT, "w3+dtransient", ["c"], 3),
    ]
    assert out.deads[2][1].errors == {"c": {"class": "transient", "message": "x", "http_status": 200}}


def test_leaving_without_failures_sends_nothing() -> None:
    out = leaving(WORK, WORK.items, routed(ok("a"), ok("b")), budget=10)
    assert out.retries == {} and out.deads == []


def test_leaving_keeps_the_items_entities() -> None:
    out = leaving(WORK, WORK.items, routed(failed("b")), budget=1_000_000)
    assert out.retries[0][0].items == (WORK.items[1],)


@pytest.mark.parametrize("budget", [1, 400, 700, 1200])
def test_records_over_the_budget_are_split_into_parts_with_every_item_once(budget: int) -> None:
    work = WorkRecord("run-1", 4, items(*(f"e{i}" for i in range(9)), size=100), id="w")
    routing = route([failed(i.id) for i in work.items],
                    attempt=1, tiers=TIERS, now_ms=NOW)
    parts = leaving(work, work.items, routing, budget).retries[0]
    assert len(parts) > 1
    assert [i.id for p in parts for i in p.items] == [f"e{i}" for i in range(9)]
    assert all(p.work_id.startswith("w+t0+p") for p in parts)
    assert len({p.work_id for p in parts}) == len(parts)
    for part in parts:
        assert len(part.items) == 1 or len(part.encode()) <= budget
        assert set(part.errors) == {i.id for i in part.items}
        assert part.attempt == 2


def test_dead_letters_over_the_budget_are_split_too() -> None:
    work = WorkRecord("run-1", 4, items("a", "b", "c", "d", size=300), id="w")
    routing = route([failed(i.id, ErrorClass.PERMANENT) for i in work.items], attempt=1, tiers=TIERS, now_ms=NOW)
    deads = leaving(work, work.items, routing, budget=1000).deads  # whole: 1838 bytes, halves: 965
    assert [r.work_id for _, r in deads] == ["w+dpermanent+p0", "w+dpermanent+p1"]
    assert all(c is ErrorClass.PERMANENT for c, _ in deads)
    assert [i.id for _, r in deads for i in r.items] == ["a", "b", "c", "d"]


def test_retry_work_and_dead_work_directly() -> None:
    group = FailedGroup()
    group.add("b", Failure(ErrorClass.TRANSIENT, "later", 503))
    by_id = {i.id: i for i in WORK.items}
    retry = retry_work(WORK, 1, group, by_id)
    dead = dead_work(WORK, ErrorClass.INVALID, group, by_id)
    assert (retry.work_id, retry.attempt, retry.items) == ("w1+t1", 2, (WORK.items[1],))
    assert (dead.work_id, dead.attempt, dead.items) == ("w1+dinvalid", 1, (WORK.items[1],))
    assert retry.errors == dead.errors == {"b": {"class": "transient", "message": "later", "http_status": 503}}


def test_derived_ids_build_on_a_work_record_without_an_explicit_id() -> None:
    work = WorkRecord("run-9", 2, items("a"), attempt=2, replay_id="rp")
    group = FailedGroup()
    group.add("a", Failure(ErrorClass.TRANSIENT, "m"))
    retry = retry_work(work, 0, group, {"a": work.items[0]})
    assert retry.work_id == "run-9/2/2/rrp+t0"
    assert retry.replay_id == "rp" and retry.attempt == 3


# --- earlier --------------------------------------------------------------------------------


def row(entity_id: str, state: State, claimed_by: str | None = "c1", retry_tier: int | None = None,
        due_at_ms: int | None = None, last_error: dict[str, Any] | None = None) -> RoutedRow:
    return RoutedRow(entity_id, int(state), claimed_by, retry_tier, due_at_ms, last_error)


def test_earlier_counts_successes_by_name() -> None:
    found = earlier([row("a", State.APPLIED), row("b", State.NO_CHANGES), row("c", State.APPLIED)], tiers=3)
    assert found.counts == Counter({"applied": 2, "no_changes": 1})
    assert found.retries == {} and found.deads == {}


def test_earlier_regroups_pending_retries_by_tier_and_claim() -> None:
    error = {"class": "transient", "message": "slow", "http_status": 503}
    found = earlier([
        row("a", State.PENDING_RETRY, "w+t0", 0, 100, error),
        row("b", State.PENDING_RETRY, "w+t0", 0, 300, error),
        row("c", State.PENDING_RETRY, "w+t1", 1, 200, None),
        row("d", State.PENDING_RETRY, "other", 0, None, error),
    ], tiers=3)
    assert found.counts == Counter({"retry_in": 4})
    assert set(found.retries) == {(0, "w+t0"), (1, "w+t1"), (0, "other")}
    assert found.retries[(0, "w+t0")].ids == ["a", "b"]
    assert found.retries[(0, "w+t0")].due_at_ms == 300
    assert found.retries[(0, "other")].due_at_ms == 0
    assert found.retries[(0, "w+t0")].http_status == 503
    assert found.retries[(1, "w+t1")].failures[0].error_class is ErrorClass.TRANSIENT


@pytest.mark.parametrize(("retry_tier", "tiers", "expected"), [
    (None, 3, 0), (0, 3, 0), (2, 3, 2), (3, 3, 2), (9, 3, 2), (5, 1, 0)])
def test_earlier_clamps_the_tier_to_the_tiers_there_are(retry_tier: int | None, tiers: int, expected: int) -> None:
    found = earlier([row("a", State.PENDING_RETRY, "w", retry_tier)], tiers=tiers)
    assert list(found.retries) == [(expected, "w")]


def test_earlier_regroups_failed_rows_by_error_class_and_claim() -> None:
    found = earlier([
        row("a", State.FAILED, "w+dpermanent", last_error={"class": "permanent", "message": "no"}),
        row("b", State.FAILED, "w+dinvalid", last_error={"class": "invalid", "message": "bad"}),
        row("c", State.FAILED, "w+dpermanent", last_error={"class": "permanent", "message": "no"}),
        row("d", State.FAILED, "w+dpermanent", last_error=None),
    ], tiers=3)
    assert found.counts == Counter({"dead_lettered": 4})
    assert {k: g.ids for k, g in found.deads.items()} == {
        (ErrorClass.PERMANENT, "w+dpermanent"): ["a", "c"],
        (ErrorClass.INVALID, "w+dinvalid"): ["b"],
        (ErrorClass.TRANSIENT, "w+dpermanent"): ["d"],  # no last_error: the default class
    }
    assert found.deads[(ErrorClass.PERMANENT, "w+dpermanent")].summary == "no (and 1 more entities)"


def test_earlier_counts_errored_rows_as_dead_lettered_without_sending_them() -> None:
    found = earlier([row("a", State.ERRORED), row("b", State.ERRORED)], tiers=3)
    assert found.counts == Counter({"dead_lettered": 2})
    assert found.deads == {} and found.retries == {}


@pytest.mark.parametrize("state", [State.QUEUED, State.APPLYING, State.OPEN, State.IGNORED])
def test_earlier_ignores_rows_in_other_states(state: State) -> None:
    found = earlier([row("a", state)], tiers=3)
    assert found.counts == Counter() and found.retries == {} and found.deads == {}


def test_earlier_of_a_mixed_record() -> None:
    found = earlier([row("a", State.APPLIED), row("b", State.PENDING_RETRY, retry_tier=1),
                     row("c", State.FAILED, last_error={"class": "invalid"}), row("d", State.ERRORED),
                     row("e", State.NO_CHANGES)], tiers=3)
    assert found.counts == Counter({"applied": 1, "no_changes": 1, "retry_in": 1, "dead_lettered": 2})


def test_success_names_cover_the_success_states() -> None:
    assert SUCCESS_NAMES == {State.APPLIED: "applied", State.NO_CHANGES: "no_changes"}


# --- failure_from ---------------------------------------------------------------------------


@pytest.mark.parametrize(("last_error", "expected"), [
    (None, Failure(ErrorClass.TRANSIENT, "failed")),
    ({}, Failure(ErrorClass.TRANSIENT, "failed")),
    ("not a dict", Failure(ErrorClass.TRANSIENT, "failed")),
    ({"class": "permanent", "message": "nope", "http_status": 422},
     Failure(ErrorClass.PERMANENT, "nope", 422)),
    ({"class": "invalid", "message": 12}, Failure(ErrorClass.INVALID, "12")),
    ({"class": "weird", "message": "m"}, Failure(ErrorClass.PERMANENT, "m")),
    ({"class": "transient", "message": "m", "detail": {"plan": "x"}},
     Failure(ErrorClass.TRANSIENT, "m", detail={"plan": "x"})),
])
def test_failure_from_reads_the_as_json_shape(last_error: Any, expected: Failure) -> None:
    assert failure_from(last_error) == expected


@pytest.mark.parametrize("failure", [
    Failure(ErrorClass.TRANSIENT, "slow", 503),
    Failure(ErrorClass.PERMANENT, "refused", 422, detail={"dcim.site": {"name": ["required"]}}),
    Failure(ErrorClass.INVALID, "bad"),
])
def test_failure_from_inverts_as_json(failure: Failure) -> None:
    assert failure_from(failure.as_json()) == failure


# --- a failure of the target as a whole costs no attempt ------------------------------------------

def _down(entity_id: str) -> EntityOutcome:
    return EntityOutcome(entity_id, None, failure=Failure(
        ErrorClass.TRANSIENT, "target failed internally for 3 of 3 entities", 207, request=RequestFault.UNAVAILABLE))


@pytest.mark.parametrize(("attempt", "tier"), [(1, 0), (2, 1), (3, 2), (4, 2), (9, 2)])
def test_a_whole_target_failure_waits_at_the_same_attempt_and_is_never_dead_lettered(attempt: int, tier: int) -> None:
    routing = route([_down("a"), failed("b")], attempt=attempt, tiers=TIERS, now_ms=NOW)
    assert list(routing.again) == [tier] and routing.again[tier].ids == ["a"]
    assert routing.again[tier].due_at_ms == NOW + round(TIERS[tier] * 1000)
    assert "a" not in {i for group in routing.dead.values() for i in group.ids}
    # "b" failed on its own: it climbs (or, past the last tier, is dead-lettered) as before.
    assert ("b" in routing.retry.get(attempt - 1, FailedGroup()).ids) is (attempt <= len(TIERS))


def test_the_same_attempt_again_is_its_own_record_with_its_own_id() -> None:
    items = tuple(WorkItem(i, "dcim.site", {"site": {"name": i}}) for i in ("a", "b"))
    work = WorkRecord("r", 0, items, 2, id="r/0/1+t0")
    routing = route([_down("a"), failed("b")], attempt=2, tiers=TIERS, now_ms=NOW)
    out = leaving(work, items, routing, 1_000_000)
    [again] = out.again[1]
    [climbing] = out.retries[1]
    assert (again.work_id, again.attempt, [i.id for i in again.items]) == ("r/0/1+t0+a1", 2, ["a"])
    assert (climbing.work_id, climbing.attempt) == ("r/0/1+t0+t1", 3)
    assert is_free_retry(again.work_id) and not is_free_retry(climbing.work_id)
    assert is_free_retry("r/0/1+a0+p2") and not is_free_retry("r/0/1+a0+t1+p1") and not is_free_retry("r/0/1")


def test_free_retries_are_counted_from_the_id_and_capped() -> None:
    from streams.pipeline.apply import MAX_FREE_RETRIES, free_retries
    items = (WorkItem("a", "dcim.site", {"site": {"name": "a"}}),)
    assert free_retries(WorkRecord("r+a1", 0, items, 2, id="r+a1/0/1+a0+t0+a1+p1")) == 2
    assert free_retries(WorkRecord("r", 0, items, 1, id="r/0/1")) == 0
    routing = route([_down("a")], attempt=4, tiers=TIERS, now_ms=NOW, free_retries=MAX_FREE_RETRIES)
    assert not routing.again and routing.dead[ErrorClass.TRANSIENT].ids == ["a"]
