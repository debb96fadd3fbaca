"""Rows nobody will touch again end terminal: the leader's sweep sends work for rows stuck in
every state a claim can leave, and a dead-lettered work record makes its rows ERRORED whatever
state they were in, where replay reaches them. Real Kafka, Postgres, the reference target and
a worker; the lost records are simulated by writing rows whose record was never sent."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from confluent_kafka import Producer
from psycopg.types.json import Jsonb

from streams.dlq.replay import ReplayOptions, replay
from streams.dlq.select import Filters
from streams.kafka import headers as h
from streams.kafka.config import confluent_config
from streams.kafka.topics import topic_names
from streams.pipeline.hashing import entity_hash
from streams.pipeline.outcomes import State
from streams.records import WorkItem, WorkRecord
from streams.settings import Settings
from streams.target.launch import TargetProcess
from tests.helpers import rows, state_counts, wait_for
from tests.integration.conftest import Workers

pytestmark = pytest.mark.integration

LONG_AGO = datetime.now(UTC) - timedelta(hours=1)


def stuck(settings: Settings, run_id: str, state: State, count: int, *, claimed_by: str | None = None,
          retry_tier: int | None = None, error: dict[str, object] | None = None) -> list[str]:
    """Rows left in `state` an hour ago by a record that never arrived."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:  # type: ignore[union-attr]
        for n, row_id in enumerate(ids):
            entity = {"site": {"name": f"{run_id}-{n}"}}
            conn.execute(
                "INSERT INTO ingestion_logs (id, request_id, run_id, batch, object_type, entity, entity_hash, state,"
                " attempts, claimed_by, retry_tier, next_attempt_at, last_error, source_topic, source_partition,"
                " source_offset, updated_at) VALUES (%s, 'r', %s, 0, 'dcim.site', %s, %s, %s, %s, %s, %s, %s, %s,"
                " 'ingest', 0, %s, %s)",
                (row_id, run_id, Jsonb(entity), entity_hash("dcim.site", entity), int(state),
                 0 if state is State.QUEUED else 1, claimed_by, retry_tier,
                 LONG_AGO if state is State.PENDING_RETRY else None, Jsonb(error) if error else None, n, LONG_AGO))
    return ids


def test_the_sweep_sends_work_for_rows_stuck_in_every_state(
        pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    settings = pipeline.model_copy(update={"sweep_interval": 1.0, "sweep_after": 2.0})
    stuck(settings, "s-queued", State.QUEUED, 5)
    stuck(settings, "s-applying", State.APPLYING, 4, claimed_by="s-applying/0/1")
    stuck(settings, "s-retry", State.PENDING_RETRY, 3, claimed_by="s-retry/0/1+t1", retry_tier=1,
          error={"class": "transient", "message": "apply: db_error"})
    stuck(settings, "s-failed", State.FAILED, 2, claimed_by="s-failed/0/1+dpermanent",
          error={"class": "permanent", "message": "plan: dcim.site.name: required", "http_status": 207})
    workers.start(settings)
    final = {State.APPLIED, State.NO_CHANGES, State.ERRORED}
    wait_for(lambda: set(state_counts(settings)) <= final, timeout=60, what="every stuck row final",
             alive=workers.alive)
    assert state_counts(settings, "s-queued") == {State.APPLIED: 5}
    assert state_counts(settings, "s-applying") == {State.APPLIED: 4}
    assert state_counts(settings, "s-retry") == {State.APPLIED: 3}
    assert state_counts(settings, "s-failed") == {State.ERRORED: 2}
    assert target.stats()["duplicate_applies"] == 0 and target.stats()["applied"] == 12
    # Taken over from PENDING_RETRY: their next attempt was counted.
    assert {a for (a,) in rows(settings, "SELECT attempts FROM ingestion_logs WHERE run_id = 's-retry'")} == {2}
    assert "sweep sent work again for stuck rows" in workers.logs()


def test_a_dead_lettered_work_record_errors_its_rows_in_any_state_and_replay_reaches_them(
        pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    # A work record that could not be processed, dead-lettered whole by the record-level
    # fallback: its rows are left APPLYING, PENDING_RETRY and QUEUED by its claim.
    record_id = "dl-any/0/1"
    applying = stuck(pipeline, "dl-any", State.APPLYING, 2, claimed_by=record_id)
    pending = stuck(pipeline, "dl-any", State.PENDING_RETRY, 2, claimed_by=record_id)
    queued = stuck(pipeline, "dl-any", State.QUEUED, 2)
    items = tuple(WorkItem(i, "dcim.site", {"site": {"name": f"dl-{i[:8]}"}}) for i in applying + pending + queued)
    work = WorkRecord("dl-any", 0, items, id=record_id)
    letter_headers = [(h.ERROR_CLASS, b"permanent"), (h.ERROR, b"ValueError: boom"), (h.ATTEMPT, b"1")]
    names = topic_names(pipeline)
    producer = Producer(confluent_config(pipeline))
    producer.produce(names.dlq, key=b"dl-any:0", value=work.encode(), headers=letter_headers)
    assert producer.flush(10) == 0
    workers.start()
    wait_for(lambda: state_counts(pipeline, "dl-any") == {State.ERRORED: 6}, timeout=60,
             what="every row of the dead letter ERRORED", alive=workers.alive)

    report = replay(pipeline, Filters(runs=("dl-any",)), ReplayOptions(requested_by="tests"))
    assert report.replayed == 1 and report.entities == 6
    wait_for(lambda: state_counts(pipeline, "dl-any") == {State.APPLIED: 6}, timeout=60,
             what="every row applied after the replay", alive=workers.alive)
