"""Every record derived from another is claimed and counted on its own: two retry records made
from one work record (one to a later tier), and several dead letters of one batch sent back by
one replay. Before work records had ids of their own, the second of each pair shared the
first's claim and event id, its settle event was dropped as a duplicate, and the run never
completed. Real Kafka, Postgres, the reference target and `streams worker` processes."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from streams.dlq.plan import Destination
from streams.dlq.replay import ReplayOptions, replay
from streams.dlq.select import Filters
from streams.kafka.admin import create_topics
from streams.kafka.config import confluent_config
from streams.kafka.topics import topic_names, topology
from streams.pipeline.outcomes import State
from streams.records import WorkRecord
from streams.runs.completions import wait_for_completion
from streams.settings import Settings
from streams.target.faults import Faults
from streams.target.launch import TargetProcess
from tests.helpers import consume_all, rows, send_run, state_counts, wait_for
from tests.integration.conftest import Workers

pytestmark = pytest.mark.integration


def _sites(count: int, prefix: str) -> list[dict[str, object]]:
    return [{"object_type": "dcim.site", "entity": {"site": {"name": f"{prefix}-{n}"}}} for n in range(count)]


def test_one_work_record_routed_to_two_tiers_completes_its_run(
        pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    # Two requests of 5 for a batch of 10: the first request the target sees is refused with
    # a Retry-After longer than the first tier (to the second tier); every entity's first
    # receipt fails with a deadlock (to the first tier). One work record, two retry records.
    custom = pipeline.model_copy(update={"batch_size": 5, "retry_tiers": (2.0, 4.0)})
    target.set_faults(Faults(status_first=1, status_code=429, retry_after=3, fail_first=1))
    workers.start(custom)
    send_run(custom, "two-tiers", _sites(10, "tt"), batch_size=10)
    completed = wait_for_completion(custom, "two-tiers", timeout=90)
    assert (completed.status, completed.entities.applied, completed.entities.errored) == ("succeeded", 10, 0)
    assert state_counts(custom, "two-tiers") == {State.APPLIED: 10}
    names = topic_names(custom)
    first = [WorkRecord.decode(m.value()) for m in consume_all(custom, names.retry[0], expect=1, timeout=10)]
    second = [WorkRecord.decode(m.value()) for m in consume_all(custom, names.retry[1], expect=1, timeout=10)]
    from_the_batch = [r for r in first + second if r.attempt == 2]
    assert len(from_the_batch) == 2  # one per tier, made from the one work record
    assert from_the_batch[0].work_id != from_the_batch[1].work_id


@pytest.mark.parametrize("destination", [Destination.WORK, Destination.TIER])
def test_one_replay_of_several_dead_letters_of_one_batch_completes_the_revision(
        pipeline: Settings, workers: Workers, target: TargetProcess, destination: Destination) -> None:
    # One batch, two dead letters: the entities the target refuses (permanent, at once) and
    # the ones it fails every time (transient, after the last tier).
    custom = pipeline.model_copy(update={"retry_tiers": (1.0, 2.0)})
    create_topics(custom, topology(custom))
    target.set_faults(Faults(permanent_rate=0.4, transient_rate=1.0, seed=11))
    workers.start(custom)
    send_run(custom, "replayed", _sites(12, "rp"), batch_size=12)
    first = wait_for_completion(custom, "replayed", timeout=90)
    assert (first.status, first.entities.errored, first.batches.failed) == ("failed", 12, 1)
    letters = consume_all(custom, topic_names(custom).dlq, expect=2, timeout=10)
    classes = sorted(dict(m.headers() or ())["x-error-class"].decode() for m in letters)
    assert classes == ["permanent", "transient"]

    target.set_faults(Faults())  # the fix
    report = replay(custom, Filters(runs=("replayed",)), ReplayOptions(destination=destination, requested_by="tests"))
    assert report.replayed == 2 and report.entities == 12
    second = wait_for_completion(custom, "replayed", timeout=90, revision=2)
    assert (second.status, second.entities.applied, second.entities.errored) == ("succeeded", 12, 0)
    assert state_counts(custom, "replayed") == {State.APPLIED: 12}
    wait_for(lambda: rows(custom, "SELECT count(DISTINCT claimed_by) FROM ingestion_logs")[0][0] == 2,
             timeout=10, what="two replayed records, two claims")


def test_a_retry_record_read_three_times_at_once_is_applied_and_counted_once(
        pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    # What a crash between sending a retry record and acking its parent leaves: copies of one
    # record. Here one lies next to it (same batch) and one on the other tier (read at the same
    # time by another task); all fall due together. Every entity's first two receipts fail and
    # each request takes a second, so the copies apply at once and see different outcomes.
    custom = pipeline.model_copy(update={"retry_tiers": (5.0, 6.0)})
    create_topics(custom, topology(custom))
    target.set_faults(Faults(fail_first=2, latency_ms=1000))
    workers.start(custom)
    send_run(custom, "copies", _sites(10, "cp"), batch_size=10)
    names = topic_names(custom)
    [record] = consume_all(custom, names.retry[0], expect=1, timeout=30)
    producer = Producer(confluent_config(custom, acks="all"))
    for topic, partition in ((names.retry[0], record.partition()), (names.retry[1], 0)):
        producer.produce(topic, key=record.key(), value=record.value(), headers=record.headers(), partition=partition)
    assert producer.flush(10) == 0
    completed = wait_for_completion(custom, "copies", timeout=90)
    assert (completed.status, completed.entities.applied, completed.entities.errored) == ("succeeded", 10, 0)
    assert state_counts(custom, "copies") == {State.APPLIED: 10}
    outcomes = rows(custom, "SELECT count(*) FROM entity_events WHERE step = 'outcome' GROUP BY entity_id")
    assert [n for (n,) in outcomes] == [1] * 10  # one delivery settled each entity
