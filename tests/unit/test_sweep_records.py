"""What the sweep sends for stuck rows (streams.sweep.Sweeper._records), its jittered pause
with backoff, and SweepResult. No database: `_records` is pure over the rows it is given."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest

from streams import sweep as sweep_module
from streams.db.sweep_store import StuckRow
from streams.kafka import headers
from streams.pipeline.outcomes import State
from streams.records import WorkRecord
from streams.settings import Settings
from streams.sweep import JITTER, MAX_BACKOFF, Sweeper, SweepResult, SweepTopics

NOW_MS = 1_700_000_000_000
SWEPT = re.compile(r"^\+s[0-9a-f]{8}$")


class Topic:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Topic({self.name})"


WORK, DLQ = Topic("ingest.work"), Topic("ingest.dlq")
RETRY = (Topic("retry.30s"), Topic("retry.5m"), Topic("retry.1h"))


class FakeResources:
    db = object()  # the store only keeps it: _records never touches it


def sweeper(**settings: Any) -> Sweeper:
    return Sweeper(object(), Settings(**settings), SweepTopics(WORK, RETRY, DLQ), FakeResources())  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _fixed_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep_module, "_now_ms", lambda: NOW_MS)


def stuck(entity_id: str, run: str = "run-1", batch: int = 0, *, claim: str | None = None, attempts: int = 1,
          tier: int | None = None, error: dict[str, Any] | None = None, pad: int = 0) -> StuckRow:
    return StuckRow(entity_id, run, batch, "dcim.site", {"site": {"name": entity_id, "pad": "x" * pad}}, claim,
                    attempts, tier, error)


Made = list[tuple[WorkRecord, tuple[Any, list[tuple[str, bytes]] | None]]]


def suffix(record: WorkRecord, base: str) -> str:
    assert record.work_id.startswith(base)
    return record.work_id[len(base):]


def header_map(hdrs: list[tuple[str, bytes]] | None) -> dict[str, str]:
    assert hdrs is not None
    keys = [k for k, _ in hdrs]
    assert len(keys) == len(set(keys))  # one value per header
    return headers.decode(hdrs)


# --- QUEUED ---------------------------------------------------------------------------------


def test_queued_rows_go_as_one_work_record_per_run_and_batch() -> None:
    rows = [stuck("a", batch=0), stuck("b", batch=1), stuck("c", batch=0), stuck("d", run="run-2", batch=0)]
    made: Made = sweeper()._records(State.QUEUED, rows)
    assert [(r.run_id, r.batch, [i.id for i in r.items]) for r, _ in made] == [
        ("run-1", 0, ["a", "c"]), ("run-1", 1, ["b"]), ("run-2", 0, ["d"])]
    assert all(topic is WORK and hdrs is None for _, (topic, hdrs) in made)


def test_a_queued_record_gets_a_fresh_swept_id_on_its_default_base() -> None:
    rows = [stuck("a", batch=3, attempts=2)]
    (first, _), = sweeper()._records(State.QUEUED, rows)
    (second, _), = sweeper()._records(State.QUEUED, rows)
    assert SWEPT.match(suffix(first, "run-1/3/2"))
    assert SWEPT.match(suffix(second, "run-1/3/2"))
    assert first.work_id != second.work_id  # a new record each pass: not a copy of a lost one


@pytest.mark.parametrize(("attempts", "expected"), [([0], 1), ([0, 0], 1), ([1], 1), ([2, 3], 3)])
def test_a_queued_record_makes_at_least_the_first_attempt(attempts: list[int], expected: int) -> None:
    rows = [stuck(f"e{i}", attempts=a) for i, a in enumerate(attempts)]
    (record, _), = sweeper()._records(State.QUEUED, rows)
    assert record.attempt == expected


def test_a_queued_record_carries_the_rows_entities_and_no_errors() -> None:
    rows = [stuck("a", error={"class": "transient", "message": "old"})]
    (record, _), = sweeper()._records(State.QUEUED, rows)
    assert record.items[0] == ("a", "dcim.site", {"site": {"name": "a", "pad": ""}})
    assert record.errors == {} and record.replay_id is None


def test_no_rows_make_no_records() -> None:
    for state in (State.QUEUED, State.APPLYING, State.PENDING_RETRY, State.FAILED):
        assert sweeper()._records(state, []) == []


# --- APPLYING -------------------------------------------------------------------------------


def test_applying_rows_are_grouped_by_their_old_claim() -> None:
    rows = [stuck("a", claim="w1"), stuck("b", claim="w2"), stuck("c", claim="w1")]
    made: Made = sweeper()._records(State.APPLYING, rows)
    assert [[i.id for i in r.items] for r, _ in made] == [["a", "c"], ["b"]]
    assert SWEPT.match(suffix(made[0][0], "w1")) and SWEPT.match(suffix(made[1][0], "w2"))
    assert all(topic is WORK and hdrs is None for _, (topic, hdrs) in made)


def test_applying_rows_keep_their_attempt() -> None:
    (record, _), = sweeper()._records(State.APPLYING, [stuck("a", claim="w", attempts=2), stuck("b", claim="w")])
    assert record.attempt == 2


# --- PENDING_RETRY --------------------------------------------------------------------------


@pytest.mark.parametrize(("tiers", "topic"), [([0], 0), ([1], 1), ([2], 2), ([0, 2, 1], 2), ([None], 0),
                                              ([7], 2), ([None, 1], 1)])
def test_pending_retries_go_to_the_topic_of_their_tier_clamped(tiers: list[int | None], topic: int) -> None:
    rows = [stuck(f"e{i}", claim="w+t0", tier=t) for i, t in enumerate(tiers)]
    (record, (to, _)), = sweeper()._records(State.PENDING_RETRY, rows)
    assert to is RETRY[topic]
    assert len(record.items) == len(tiers)


def test_a_pending_retry_record_is_the_next_attempt_due_now() -> None:
    error = {"class": "transient", "message": "slow", "http_status": 503}
    rows = [stuck("a", claim="w+t1", attempts=2, tier=1, error=error), stuck("b", claim="w+t1", attempts=3, tier=1)]
    (record, (topic, hdrs)), = sweeper()._records(State.PENDING_RETRY, rows)
    assert topic is RETRY[1]
    assert record.attempt == 4
    assert SWEPT.match(suffix(record, "w+t1"))
    assert record.errors == {"a": error}
    values = header_map(hdrs)
    assert values[headers.DUE_AT] == str(NOW_MS)
    assert values[headers.ATTEMPT] == "3"  # the attempt that failed, as the plan-apply step writes it
    assert values[headers.ERROR_CLASS] == "transient"
    assert values[headers.RUN_ID] == "run-1"
    assert values[headers.ORIGIN_TOPIC] == "sweep"
    assert "tier 1" in values[headers.ERROR]
    assert headers.HTTP_STATUS not in values


def test_pending_retries_of_different_claims_are_separate_records() -> None:
    rows = [stuck("a", claim="w+t0", tier=0), stuck("b", claim="v+t2", tier=2)]
    made: Made = sweeper()._records(State.PENDING_RETRY, rows)
    assert [(r.work_id[:4], to) for r, (to, _) in made] == [("w+t0", RETRY[0]), ("v+t2", RETRY[2])]


def test_a_pending_retry_without_a_claim_builds_on_the_default_id() -> None:
    (record, _), = sweeper()._records(State.PENDING_RETRY, [stuck("a", batch=5, attempts=1, tier=0)])
    assert SWEPT.match(suffix(record, "run-1/5/1"))
    assert record.attempt == 2


# --- FAILED ---------------------------------------------------------------------------------


def test_a_failed_group_goes_to_the_dlq_again_under_its_own_claim() -> None:
    error = {"class": "invalid", "message": "bad site", "http_status": 422}
    rows = [stuck("a", claim="w+dinvalid", attempts=2, error=error), stuck("b", claim="w+dinvalid", attempts=2,
                                                                         error=error)]
    (record, (topic, hdrs)), = sweeper()._records(State.FAILED, rows)
    assert topic is DLQ
    assert record.work_id == "w+dinvalid"  # the same id: the tracker counts it once
    assert record.attempt == 2
    assert record.errors == {"a": error, "b": error}
    values = header_map(hdrs)
    assert values[headers.ERROR_CLASS] == "invalid"
    assert values[headers.ERROR] == "bad site"
    assert values[headers.HTTP_STATUS] == "422"
    assert values[headers.ATTEMPT] == "2"
    assert values[headers.RUN_ID] == "run-1"
    assert values[headers.FIRST_FAILED_AT] == str(NOW_MS)
    assert headers.DUE_AT not in values


@pytest.mark.parametrize(("errors", "error_class", "message"), [
    ([None], "permanent", "dead letter sent again by the sweep"),
    ([{"class": "weird", "message": "m"}], "permanent", "m"),
    ([{}], "permanent", "dead letter sent again by the sweep"),
    ([None, {"class": "transient", "message": "later"}], "transient", "later"),
    ([{"class": "invalid", "message": "one"}, {"class": "permanent", "message": "two"}], "invalid", "one"),
])
def test_a_dead_letters_error_class_comes_from_the_first_last_error(
        errors: list[dict[str, Any] | None], error_class: str, message: str) -> None:
    rows = [stuck(f"e{i}", claim="w+d", error=e) for i, e in enumerate(errors)]
    (_, (_, hdrs)), = sweeper()._records(State.FAILED, rows)
    values = header_map(hdrs)
    assert values[headers.ERROR_CLASS] == error_class
    assert values[headers.ERROR] == message


def test_failed_rows_without_a_claim_go_to_the_dlq_under_a_fresh_id() -> None:
    # Rows from before claims existed: the dead-letter agent takes FAILED rows without a claim.
    rows = [stuck("a", claim=None), stuck("b", claim=None)]
    (record, (topic, _)), = sweeper()._records(State.FAILED, rows)
    assert topic is DLQ
    assert re.fullmatch(r"run-1/0/1\+s[0-9a-f]{8}", record.work_id)
    assert [i.id for i in record.items] == ["a", "b"]


def test_failed_rows_of_different_claims_are_separate_dead_letters() -> None:
    rows = [stuck("a", claim="w+dpermanent"), stuck("b", claim="w+dinvalid"), stuck("c", claim="w+dpermanent")]
    made: Made = sweeper()._records(State.FAILED, rows)
    assert [(r.work_id, [i.id for i in r.items]) for r, _ in made] == [("w+dpermanent", ["a", "c"]),
                                                                       ("w+dinvalid", ["b"])]


# --- splitting ------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [State.QUEUED, State.APPLYING, State.PENDING_RETRY, State.FAILED])
def test_records_over_the_budget_are_split_with_every_row_once(state: State) -> None:
    rows = [stuck(f"e{i}", claim="w", tier=0, pad=400) for i in range(6)]
    made: Made = sweeper(max_record_bytes=1200)._records(state, rows)
    assert len(made) > 1
    assert [i.id for r, _ in made for i in r.items] == [f"e{i}" for i in range(6)]
    assert len({r.work_id for r, _ in made}) == len(made)
    assert all(len(r.encode()) <= 1200 for r, _ in made)
    assert len({to for _, (to, _) in made}) == 1
    if state is State.FAILED:
        assert all(r.work_id.startswith("w+p") for r, _ in made)


# --- the pause ------------------------------------------------------------------------------


@pytest.mark.parametrize(("failures", "base"), [(0, 60.0), (1, 120.0), (2, 240.0), (3, 480.0),
                                                (8, 60.0 * 256), (50, 60.0 * 256)])
@pytest.mark.parametrize("jitter", [1 - JITTER, 1.0, 1 + JITTER])
def test_the_pause_backs_off_exponentially_after_failures_up_to_the_cap(
        monkeypatch: pytest.MonkeyPatch, failures: int, base: float, jitter: float) -> None:
    bounds: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        bounds.append((low, high))
        return jitter

    monkeypatch.setattr(sweep_module.random, "uniform", uniform)
    expected = base * jitter if failures == 0 else min(MAX_BACKOFF, base * jitter)
    assert sweeper(sweep_interval=60.0)._pause(failures) == pytest.approx(expected)
    assert bounds == [(1 - JITTER, 1 + JITTER)]


@pytest.mark.parametrize("failures", [1, 2, 8])
def test_a_failure_never_shortens_a_pause_longer_than_the_cap(failures: int) -> None:
    made = sweeper(sweep_interval=MAX_BACKOFF * 2)
    assert all(made._pause(failures) == MAX_BACKOFF * 2 for _ in range(50))


def test_a_pause_after_failures_never_passes_the_cap() -> None:
    made = sweeper(sweep_interval=60.0)
    assert all(made._pause(3) <= MAX_BACKOFF for _ in range(200))


def test_the_pause_is_jittered_within_its_bounds() -> None:
    made = sweeper(sweep_interval=10.0)
    pauses = [made._pause(0) for _ in range(200)]
    assert all(10.0 * (1 - JITTER) <= p <= 10.0 * (1 + JITTER) for p in pauses)
    assert len(set(pauses)) > 1  # jittered, not in step


# --- SweepResult ----------------------------------------------------------------------------


@pytest.mark.parametrize(("records", "changed"), [(0, False), (1, True), (12, True)])
def test_a_pass_changed_something_when_it_sent_records(records: int, changed: bool) -> None:
    assert SweepResult(Counter(), records).changed is changed


def test_a_pass_with_rows_counted_but_no_record_changed_nothing() -> None:
    assert SweepResult(Counter({"queued": 3})).changed is False


def test_a_new_sweeper_has_made_no_pass() -> None:
    made = sweeper()
    assert made.passes == 0 and not made.passed.is_set()
    assert made.store.db is FakeResources.db
