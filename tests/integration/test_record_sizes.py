"""Every valid ingest record up to STREAMS_MAX_RECORD_BYTES flows end to end, whatever the
records derived from it weigh; one byte over is dead-lettered as an excerpt with its origin and
never stops its partition. Real Kafka, Postgres, the reference target and a worker, at the
default limit of 1 MiB: what the brokers, the topics and every producer must take."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from streams.kafka import headers
from streams.kafka.admin import create_topics
from streams.kafka.topics import topic_names, topology
from streams.pipeline.outcomes import State
from streams.records import WorkRecord
from streams.runs.completions import wait_for_completion
from streams.settings import Settings
from streams.target.faults import Faults
from streams.target.launch import TargetProcess
from tests.helpers import consume_all, produce_raw, settled, state_counts, wait_for
from tests.integration.conftest import Workers

pytestmark = pytest.mark.integration

LIMIT = Settings().max_record_bytes


@pytest.fixture
def small(pipeline: Settings) -> Settings:
    """The pipeline with one short retry tier, on topics created for it."""
    tag = uuid.uuid4().hex[:6]
    custom = pipeline.model_copy(update={"topic_prefix": f"{pipeline.topic_prefix}{tag}.",
                                         "app_id": f"{pipeline.app_id}-{tag}", "retry_tiers": (1.0,)})
    create_topics(custom, topology(custom))
    return custom


def batch_of(run_id: str, batch: int, count: int, size: int | None = None) -> bytes:
    """An ingest batch record of `count` sites; exactly `size` bytes when given."""
    entities: list[dict[str, Any]] = [
        {"object_type": "dcim.site", "entity": {"name": f"{run_id}-{batch}-{n}", "description": ""}}
        for n in range(count)]
    record = {"kind": "batch", "run_id": run_id, "batch": batch, "request_id": f"{run_id}-{batch}",
              "entities": entities}
    if size is not None:
        entities[-1]["entity"]["description"] = "x" * (size - len(orjson.dumps(record)))
    value = orjson.dumps(record)
    assert size is None or len(value) == size
    return value


def seal(run_id: str, batches: int) -> bytes:
    return orjson.dumps({"kind": "seal", "run_id": run_id, "batches": batches})


def test_a_record_at_the_limit_flows_end_to_end_and_one_byte_over_is_an_excerpt(
        small: Settings, workers: Workers) -> None:
    names = topic_names(small)
    at_limit = batch_of("sz", 0, 1000, size=LIMIT)
    over = batch_of("sz", 1, 1000, size=LIMIT + 1)
    after = batch_of("sz", 1, 3)  # the same batch again, valid: behind the bad one on its partition
    produce_raw(small, names.ingest, [(b"k", at_limit), (b"k", over), (b"k", after), (b"k", seal("sz", 2))])
    workers.start(small)
    completed = wait_for_completion(small, "sz", timeout=90)
    assert (completed.status, completed.entities.accepted, completed.entities.applied) == ("succeeded", 1003, 1003)
    assert state_counts(small, "sz") == {State.APPLIED: 1003}

    # The work record of the batch at the limit is larger than the limit: it went in parts.
    parts = [WorkRecord.decode(m.value()) for m in consume_all(small, names.work, expect=3, timeout=10)]
    ids = [p.work_id for p in parts if p.batch == 0]
    assert len(ids) >= 2 and len(set(ids)) == len(ids) and sum(len(p.items) for p in parts if p.batch == 0) == 1000

    [letter] = consume_all(small, names.dlq, expect=1, timeout=10)
    found = headers.decode(letter.headers())
    assert found[headers.ERROR_CLASS] == "invalid" and f"above the limit of {LIMIT}" in found[headers.ERROR]
    assert found[headers.EXCERPT_OF] == str(LIMIT + 1) and len(letter.value()) == headers.EXCERPT_BYTES
    # Where the whole record is: the second record of its ingest partition.
    assert (found[headers.ORIGIN_TOPIC], found[headers.ORIGIN_OFFSET]) == (names.ingest, "1")
    assert letter.value() == over[:headers.EXCERPT_BYTES]


def test_dead_letters_larger_than_their_work_record_are_split_and_every_row_ends_errored(
        small: Settings, workers: Workers, target: TargetProcess) -> None:
    # Every entity refused: each dead-letter item carries its error, so the dead letters of a
    # batch just under the limit weigh more than the batch did.
    target.set_faults(Faults(permanent_rate=1.0))
    names = topic_names(small)
    produce_raw(small, names.ingest, [(b"k", batch_of("big", 0, 1000, size=LIMIT - 10)), (b"k", seal("big", 1))])
    workers.start(small.model_copy(update={"target_url": target.url}))
    completed = wait_for_completion(small, "big", timeout=90)
    assert (completed.status, completed.entities.errored, completed.batches.failed) == ("failed", 1000, 1)
    wait_for(lambda: settled(small, "big", 1000), timeout=30, what="every row final")
    assert state_counts(small, "big") == {State.ERRORED: 1000}
    letters = consume_all(small, names.dlq, expect=2, timeout=10)
    records = [WorkRecord.decode(m.value()) for m in letters]
    assert len(records) >= 2 and sum(len(r.items) for r in records) == 1000
    assert all(len(m.value()) <= LIMIT for m in letters) and len({r.work_id for r in records}) == len(records)
