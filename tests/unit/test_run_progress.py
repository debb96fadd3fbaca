"""Run accounting (streams.runs.progress): every event type, redelivery, any order of events
and seal, completion and revisions; plus the pure helpers of the tracker (positions), the
completions reader and the CLI."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from jsonschema import Draft202012Validator

from streams.cli.runs import run_state
from streams.db.runs_store import RunRow
from streams.kafka.positions import RESEEK_AFTER, Positions, Verdict
from streams.records import (
    RunEvent,
    WorkItem,
    WorkRecord,
    batch_accepted,
    entities_errored,
    entities_requeued,
    entities_settled,
    sealed,
)
from streams.runs.completions import partition_for
from streams.runs.progress import BatchState, RunProgress, Totals, apply_event, contribution, recount

RUN = "run-1"
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "run-completed.schema.json"
SCHEMA = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def work(batch: int, attempt: int = 1, replay_id: str | None = None) -> WorkRecord:
    return WorkRecord(RUN, batch, (WorkItem("00000000-0000-0000-0000-000000000000", "dcim.site", {}),),
                      attempt, replay_id)


def accepted(batch: int, new: int = 5, duplicates: int = 0) -> RunEvent:
    return batch_accepted(RUN, batch, entities=new + duplicates, new=new, duplicates=duplicates,
                          producer={"app_name": "tests"})


def settled(batch: int, attempt: int = 1, **counts: int) -> RunEvent:
    return entities_settled(work(batch, attempt), counts)


def fold(events: list[RunEvent], progress: RunProgress | None = None,
         batches: dict[int, BatchState] | None = None) -> tuple[RunProgress, dict[int, BatchState]]:
    """What the tracker does with `events`, in order, without faust (continuing from a state)."""
    progress = progress or RunProgress(RUN)
    batches = dict(batches or {})
    for at, event in enumerate(events, start=1_700_000_000_000):
        if event.type == "sealed":
            progress = progress.seal(event.counts["batches"], at) or progress
            continue
        assert event.batch is not None
        old = batches.get(event.batch, BatchState())
        new = apply_event(old, event)
        if new is not None:
            batches[event.batch] = new
            progress = progress.with_batch(old, new, at, event.producer)
    return progress, batches


def clean_run(batches: int, per_batch: int = 5) -> list[RunEvent]:
    events: list[RunEvent] = []
    for b in range(batches):
        events += [accepted(b, per_batch), settled(b, applied=per_batch - 1, no_changes=1)]
    return events


# --- one batch -----------------------------------------------------------------------------


def test_a_batch_settles_when_every_new_entity_is_terminal() -> None:
    batch = apply_event(BatchState(), accepted(0, new=5, duplicates=2))
    assert batch is not None and not batch.settled
    batch = apply_event(batch, settled(0, applied=3, no_changes=1))
    assert batch is not None and not batch.settled and batch.outcome is None
    batch = apply_event(batch, entities_errored(RUN, 0, work_id="w0-7", errored=1))
    assert batch is not None and batch.settled and batch.outcome == "failed"
    assert (batch.entities, batch.new, batch.duplicates, batch.applied, batch.no_changes, batch.errored) == \
        (7, 5, 2, 3, 1, 1)


def test_settles_before_acceptance_wait_for_the_accepted_count() -> None:
    batch = apply_event(BatchState(), settled(0, applied=5))
    assert batch is not None and not batch.settled
    batch = apply_event(batch, accepted(0, new=5))
    assert batch is not None and batch.outcome == "completed"


def test_a_batch_of_duplicates_only_is_completed_on_acceptance() -> None:
    batch = apply_event(BatchState(), accepted(0, new=0, duplicates=5))
    assert batch is not None and batch.outcome == "completed"


@pytest.mark.parametrize("event", [
    accepted(0), settled(0, applied=1), entities_errored(RUN, 0, work_id="w1-2", errored=1),
    entities_requeued(RUN, 0, replay_id="r1", partition=1, offset=2, requeued=1, retry_in=0),
])
def test_an_event_delivered_twice_counts_once(event: RunEvent) -> None:
    once = apply_event(BatchState(), event)
    assert once is not None
    assert apply_event(once, event) is None
    # A copy decoded from the wire is the same fact.
    assert apply_event(once, RunEvent.decode(event.encode())) is None


def test_unknown_types_and_keys_are_not_counted() -> None:
    assert apply_event(BatchState(), RunEvent("entities_teleported", "x:1", RUN, 0, {"applied": 3})) is None
    batch = apply_event(BatchState(), settled(0, applied=2, failed=3, surprise=9))
    assert batch is not None and (batch.applied, batch.errored) == (2, 0)
    # Counts that are not integers are zero, not a crash.
    text_count = RunEvent("entities_settled", "settled:z", RUN, 0, {"applied": "2"})  # type: ignore[dict-item]
    batch = apply_event(BatchState(), text_count)
    assert batch is not None and batch.applied == 0


def test_retries_count_in_and_out_and_a_replay_reopens_then_resettles_a_batch() -> None:
    events = [
        accepted(0, new=4),
        settled(0, 1, applied=2, retry_in=2),                       # 2 to the first tier
        settled(0, 2, applied=1, retry_out=2, dead_lettered=1),     # from the tier: 1 applied, 1 to the DLQ
        entities_errored(RUN, 0, work_id="w0-5", errored=1),
    ]
    progress, batches = fold(events)
    assert batches[0].outcome == "failed" and batches[0].in_retry == 0
    assert (progress.totals.applied, progress.totals.errored, progress.totals.batches_failed) == (3, 1, 1)
    # A replay puts the entity back (into a tier: retry_in), then it applies.
    requeue = entities_requeued(RUN, 0, replay_id="r1", partition=0, offset=5, requeued=1, retry_in=1)
    progress, batches = fold([*events, requeue])
    assert batches[0].outcome is None
    assert (progress.totals.in_retry, progress.totals.batches_failed) == (1, 0)
    # The replayed record carries its replay id: its settle is a new fact, not attempt 2 again.
    progress, batches = fold([*events, requeue, settled(0, 2, applied=1, retry_out=1)])
    assert batches[0].outcome is None
    replayed = entities_settled(work(0, 1, replay_id="r1"), {"applied": 1, "retry_out": 1})
    progress, batches = fold([*events, requeue, replayed])
    assert batches[0].outcome == "completed" and batches[0].in_retry == 0
    t = progress.totals
    assert (t.batches_completed, t.batches_failed, t.errored) == (1, 0, 0)


# --- a run -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seal_at", ["first", "middle", "last"])
def test_the_seal_may_come_anywhere(seal_at: str) -> None:
    events = clean_run(10)
    position = {"first": 0, "middle": len(events) // 2, "last": len(events)}[seal_at]
    events.insert(position, sealed(RUN, 10))
    due_at = []
    progress = RunProgress(RUN)
    batches: dict[int, BatchState] = {}
    for i, event in enumerate(events):
        progress, _ = fold([event], progress) if event.type == "sealed" else _step(progress, batches, event)
        if progress.due:
            due_at.append(i)
    assert due_at == [len(events) - 1]  # due exactly when the last fact arrives, not before
    assert progress.totals == Totals(batches_accepted=10, batches_completed=10, entities_accepted=50,
                                     applied=40, no_changes=10, events=20)


def _step(progress: RunProgress, batches: dict[int, BatchState], event: RunEvent
          ) -> tuple[RunProgress, dict[int, BatchState]]:
    assert event.batch is not None
    old = batches.get(event.batch, BatchState())
    new = apply_event(old, event)
    if new is None:
        return progress, batches
    batches[event.batch] = new
    return progress.with_batch(old, new, 1, event.producer), batches


def test_any_order_and_any_redelivery_gives_the_same_totals() -> None:
    events = [sealed(RUN, 30), *clean_run(30)]
    events += [accepted(30, new=2), settled(30, applied=2)]  # a batch beyond the seal's count is counted too
    expected, expected_batches = fold(events)
    rng = random.Random(20)
    for _ in range(200):
        shuffled = events + rng.sample(events, k=rng.randint(0, len(events)))  # redeliveries
        rng.shuffle(shuffled)
        progress, batches = fold(shuffled)
        assert progress.totals == expected.totals
        assert progress.totals == recount(list(batches.values()))
        assert _unordered(batches) == _unordered(expected_batches)
    assert expected.totals.batches_completed == 31 and expected.totals.batches_accepted == 31
    # 31 batches settled against a seal of 30: a producer bug, and the run is not reported complete.
    assert not expected.due
    assert expected.totals.batches_completed + expected.totals.batches_failed == 31


def _unordered(batches: dict[int, BatchState]) -> dict[int, tuple[BatchState, frozenset[str]]]:
    return {b: (replace(s, events=()), frozenset(s.events)) for b, s in batches.items()}


def test_a_second_seal_does_not_change_the_count() -> None:
    progress = RunProgress(RUN).seal(5, 10)
    assert progress is not None
    assert progress.seal(5, 20) is None and progress.seal(6, 20) is None
    assert (progress.batches_total, progress.sealed_at) == (5, 10)


def test_an_empty_sealed_run_is_complete() -> None:
    progress = RunProgress(RUN).seal(0, 10)
    assert progress is not None and progress.due
    assert progress.completion(1, 20).status == "succeeded"


def test_unsealed_runs_are_never_due() -> None:
    progress, _ = fold(clean_run(3))
    assert progress.totals.batches_completed == 3 and not progress.sealed and not progress.due


# --- completion and revisions ---------------------------------------------------------------


def test_completion_counts_and_schema() -> None:
    events = [*clean_run(3), accepted(3, new=2, duplicates=1), settled(3, applied=1),
              entities_errored(RUN, 3, work_id="w0-1", errored=1), sealed(RUN, 4)]
    progress, _ = fold(events)
    assert progress.due
    completed = progress.completion(1, 1_700_000_100_000)
    assert completed.status == "failed"
    assert completed.batches.model_dump() == {"total": 4, "completed": 3, "failed": 1}
    assert completed.entities.model_dump() == {
        "accepted": 18, "applied": 13, "no_changes": 3, "duplicates": 1, "errored": 1}
    Draft202012Validator(SCHEMA).validate(orjson.loads(completed.model_dump_json()))
    assert completed.sealed_at.tzinfo is not None


def test_a_revision_is_due_only_when_the_outcome_changes() -> None:
    failing = [*clean_run(2), accepted(2, new=1), entities_errored(RUN, 2, work_id="w0-9", errored=1),
               sealed(RUN, 3)]
    progress, batches = fold(failing)
    first = progress.completion(1, 5)
    progress = progress.emitted_as(first)
    assert not progress.due and progress.revision == 1
    # Redelivered events change nothing: no new revision.
    again, _ = fold(failing, progress, batches)
    assert again == progress and not again.due
    # A replay reopens batch 2 (not due while unsettled), and it applies: revision 2, failed 0.
    requeue = entities_requeued(RUN, 2, replay_id="r9", partition=0, offset=9, requeued=1, retry_in=0)
    reopened, batches = fold([requeue], progress, batches)
    assert not reopened.due and not reopened.settled
    fixed, _ = fold([entities_settled(work(2, 1, "r9"), {"applied": 1})], reopened, batches)
    assert fixed.due
    second = fixed.completion(fixed.revision + 1, 6)
    assert (second.revision, second.status, second.batches.failed, second.entities.errored) == \
        (2, "succeeded", 0, 0)
    assert not fixed.emitted_as(second).due


def test_a_replay_that_fails_again_ends_where_it_was_without_a_new_revision() -> None:
    failing = [accepted(0, new=1), entities_errored(RUN, 0, work_id="w0-1", errored=1), sealed(RUN, 1)]
    progress, batches = fold(failing)
    progress = progress.emitted_as(progress.completion(1, 5))
    requeue = entities_requeued(RUN, 0, replay_id="r", partition=0, offset=1, requeued=1, retry_in=0)
    again = entities_errored(RUN, 0, work_id="w0-2", errored=1)
    progress, _ = fold([requeue, again], progress, batches)
    assert progress.settled and not progress.due


def test_values_survive_the_changelog_encoding() -> None:
    progress, batches = fold([*clean_run(2), sealed(RUN, 2)])
    progress = progress.emitted_as(progress.completion(1, 1_700_000_000_123))
    assert RunProgress.from_json(orjson.loads(orjson.dumps(progress.to_json()))) == progress
    for batch in batches.values():
        assert BatchState.from_json(orjson.loads(orjson.dumps(batch.to_json()))) == batch
    assert BatchState.from_json(None) == BatchState()


def test_contributions_add_up_and_subtract_back() -> None:
    _, batches = fold(clean_run(4))
    total = recount(list(batches.values()))
    for batch in batches.values():
        total -= contribution(batch)
    assert total == Totals()


# --- helpers of the reader and the CLI ------------------------------------------------------


def test_completions_are_partitioned_like_faust_and_the_java_client() -> None:
    for run_id in ("a", "dc1-sweep-2026-11-22", "run:with:colons", "x" * 200):
        for partitions in (1, 2, 8, 13):
            assert partition_for(run_id, partitions) == DefaultPartitioner()(
                run_id.encode(), list(range(partitions)), list(range(partitions)))


def _row(**changes: object) -> RunRow:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    base = RunRow(RUN, 0, 10, 10, 4, 0, 50, 20, 0, 0, 0, 0, now, now, None, now, None)
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "state"), [
    ({"batches_total": None}, "open"),
    ({}, "running"),
    ({"batches_completed": 10}, "succeeded"),
    ({"batches_completed": 9, "batches_failed": 1}, "failed"),
    ({"revision": 1, "batches_completed": 9}, "replaying"),
])
def test_run_states(changes: dict[str, object], state: str) -> None:
    row = _row(**changes)
    assert run_state(row, row.updated_at + timedelta(seconds=5), 60) == (state, False)


def test_only_incomplete_runs_stall() -> None:
    row = _row()
    assert run_state(row, row.updated_at + timedelta(minutes=11), 600) == ("running", True)
    done = _row(batches_completed=10)
    assert run_state(done, done.updated_at + timedelta(days=3), 600) == ("succeeded", False)


# --- positions: records the consumer skipped ------------------------------------------------

P = ("t.ingest.run-events", 0)


def test_records_are_counted_in_order_from_the_committed_offset() -> None:
    positions = Positions()
    positions.reset({P: 10})
    for offset in (10, 11, 12):
        assert positions.check(P, offset, now=0) == Verdict(True)
        positions.counted(P, offset)
    assert positions.next == {P: 13}
    # Delivered again after a rebalance or a seek: counted again (idempotently), position kept.
    assert positions.check(P, 11, now=0) == Verdict(True)
    positions.counted(P, 11)
    assert positions.next == {P: 13}


def test_a_record_after_a_hole_is_held_back_and_the_partition_read_again() -> None:
    positions = Positions()
    positions.reset({P: 10})
    assert positions.check(P, 12, now=0) == Verdict(False, 10)  # 10 and 11 were skipped: seek to 10
    assert positions.check(P, 13, now=0.5) == Verdict(False)  # the seek is under way: just drop
    assert positions.check(P, 14, now=RESEEK_AFTER + 0.1) == Verdict(False, 10)  # it did not work: again
    assert positions.check(P, 10, now=3) == Verdict(True)
    positions.counted(P, 10)
    assert positions.check(P, 11, now=3) == Verdict(True)


def test_an_untracked_partition_is_counted_as_it_comes() -> None:
    positions = Positions()
    assert positions.check(P, 42, now=0) == Verdict(True)
    positions.counted(P, 42)
    assert positions.next == {}


def test_a_partition_whose_end_was_not_delivered_is_read_again() -> None:
    positions = Positions()
    positions.reset({P: 1, ("t.ingest.run-events", 1): 5})
    ends: dict[tuple[str, int], int | None] = {P: 3, ("t.ingest.run-events", 1): 5}
    assert positions.behind(ends, now=0) == {P: 1}
    assert positions.behind(ends, now=1) == {}  # a seek is under way
    assert positions.behind(ends, now=RESEEK_AFTER + 1) == {P: 1}
    assert positions.behind({P: None}, now=10) == {}  # end not known yet
    positions.reset({})
    assert positions.behind(ends, now=20) == {}
