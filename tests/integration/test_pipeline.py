"""The ingest topology end to end: real Kafka, real Postgres, the reference target over HTTP,
and `streams worker` processes."""

from __future__ import annotations

import signal

import orjson
import pytest

from streams.client.generate import generate_entities
from streams.kafka import headers
from streams.kafka.topics import topic_names
from streams.pipeline.hashing import strip_metadata
from streams.pipeline.outcomes import State
from streams.settings import Settings
from streams.target.faults import Faults
from streams.target.launch import TargetProcess
from tests.helpers import (
    committed,
    consume_all,
    end_offsets,
    produce_raw,
    rows,
    send_run,
    settled,
    state_counts,
    wait_for,
)
from tests.integration.conftest import Workers

pytestmark = pytest.mark.integration

def test_run_applies_every_entity_once_and_a_resend_only_counts_duplicates(
        pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    entities = list(generate_entities(5000, seed=7, duplicate_ratio=0.1))
    workers.start()
    send_run(pipeline, "run-a", entities)
    distinct = len({orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in _without_metadata(entities)})
    wait_for(lambda: settled(pipeline, "run-a", distinct), timeout=120, what="run-a settled",
             alive=workers.alive)
    counts = state_counts(pipeline, "run-a")
    assert set(counts) <= {State.APPLIED, State.NO_CHANGES}, workers.logs()
    assert rows(pipeline, "SELECT sum(duplicate_count) FROM ingestion_logs")[0][0] == 5000 - distinct
    assert rows(pipeline, "SELECT count(*) FROM change_sets")[0][0] == distinct

    # The producer retries every batch of run-a: recognised, nothing new, nothing counted again.
    send_run(pipeline, "run-a", entities)
    # The same entities in a new run are duplicates of run-a's rows and are not sent again.
    send_run(pipeline, "run-b", entities)
    ingest = topic_names(pipeline).ingest
    wait_for(lambda: committed(pipeline, ingest) == end_offsets(pipeline, ingest), timeout=60,
             what="every ingest record committed", alive=workers.alive)
    assert state_counts(pipeline, "run-b") == {}
    assert rows(pipeline, "SELECT sum(duplicate_count) FROM ingestion_logs")[0][0] == 2 * 5000 - distinct
    assert rows(pipeline, "SELECT count(*) FROM ingest_batches WHERE run_id = 'run-a'")[0][0] == 20
    stats = target.stats()
    assert stats["applied"] == distinct
    assert stats["receipts_by_id_max"] == 1
    assert stats["duplicate_applies"] == 0


def test_permanent_rejections_fail_alone(pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    target.set_faults(Faults(permanent_rate=0.2, seed=3))
    entities = list(generate_entities(1000, seed=11, duplicate_ratio=0.0))
    workers.start()
    send_run(pipeline, "run-p", entities, batch_size=500)
    wait_for(lambda: settled(pipeline, "run-p", 1000), timeout=90, what="run-p settled", alive=workers.alive)
    counts = state_counts(pipeline, "run-p")
    # Permanent failures go to the dead-letter topic at once; the dead-letter agent errors them.
    assert 100 < counts[State.ERRORED] < 300
    assert counts[State.ERRORED] + counts[State.APPLIED] == 1000
    errors = rows(pipeline, "SELECT last_error FROM ingestion_logs WHERE state = %s", (int(State.ERRORED),))
    assert all(error["class"] == "permanent" and error["message"].startswith("plan:") for (error,) in errors)
    # Siblings of rejected entities in the same request were applied.
    mixed = rows(pipeline, "SELECT batch FROM ingestion_logs WHERE run_id = 'run-p' GROUP BY batch"
                           " HAVING count(DISTINCT state) = 2")
    assert mixed


def test_malformed_records_are_dead_lettered_and_the_partition_goes_on(
        pipeline: Settings, workers: Workers) -> None:
    names = topic_names(pipeline)
    good = {"kind": "batch", "run_id": "run-m", "batch": 0, "request_id": "r0",
            "entities": [{"object_type": "dcim.site", "entity": {"name": "m1", "slug": "m1"}}]}
    too_large = orjson.dumps({**good, "batch": 9, "entities": [
        {"object_type": "dcim.site", "entity": {"name": "x" * 1000, "slug": f"s{i}"}} for i in range(150)]})
    key = b"same-partition"
    produce_raw(pipeline, names.ingest, [
        (key, b"{not json"),
        (key, orjson.dumps({"kind": "batch", "run_id": "run-m", "batch": -1, "request_id": "r", "entities": []})),
        (key, too_large),
        (key, orjson.dumps(good)),
    ])
    settings = pipeline.model_copy(update={"max_record_bytes": 100_000})
    workers.settings = settings
    workers.start()
    dead = consume_all(pipeline, names.dlq, expect=3)
    reasons = sorted(headers.decode(m.headers())[headers.ERROR] for m in dead)
    assert len(dead) == 3
    assert any(r.startswith("not valid JSON") for r in reasons)
    assert any("fails the schema" in r for r in reasons)
    assert any("above the limit of 100000" in r for r in reasons)
    for message in dead:
        found = headers.decode(message.headers())
        assert found[headers.ERROR_CLASS] == "invalid"
        assert found[headers.ORIGIN_TOPIC] == names.ingest
    wait_for(lambda: settled(pipeline, "run-m", 1), timeout=60, what="the good record applied",
             alive=workers.alive)


def test_an_exception_in_an_agent_never_skips_an_offset(pipeline: Settings, workers: Workers) -> None:
    names = topic_names(pipeline)
    # A NUL character passes JSON and the schema but Postgres refuses it in jsonb: the whole
    # COPY fails inside the ingest agent. Garbage on ingest.work fails inside plan-apply.
    poisoned = {"kind": "batch", "run_id": "run-x", "batch": 1, "request_id": "r1",
                "entities": [{"object_type": "dcim.site", "entity": {"name": "bad\u0000name", "slug": "bad"}}]}
    records = [(b"k", orjson.dumps({"kind": "batch", "run_id": "run-x", "batch": n, "request_id": f"r{n}",
                                     "entities": [{"object_type": "dcim.site",
                                                   "entity": {"name": f"x{n}", "slug": f"x{n}"}}]}))
               for n in (0, 2, 3)]
    produce_raw(pipeline, names.ingest, [records[0], (b"k", orjson.dumps(poisoned)), *records[1:]])
    produce_raw(pipeline, names.work, [(b"w", b"\x00garbage")])
    workers.start()
    wait_for(lambda: settled(pipeline, "run-x", 3), timeout=90, what="healthy batches applied",
             alive=workers.alive)
    dead = consume_all(pipeline, names.dlq, expect=2)
    classes = sorted(headers.decode(m.headers())[headers.ERROR_CLASS] for m in dead)
    assert classes == ["invalid", "permanent"]
    for topic in (names.ingest, names.work):
        wait_for(lambda t=topic: committed(pipeline, t) == end_offsets(pipeline, t), timeout=30,
                 what=f"{topic} committed to its end")


def test_a_worker_killed_mid_run_loses_nothing_and_applies_nothing_twice(
        pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    target.set_faults(Faults(latency_ms=40))
    entities = list(generate_entities(6000, seed=5, duplicate_ratio=0.0))
    first = workers.start()
    workers.start()
    send_run(pipeline, "run-k", entities, batch_size=200)
    wait_for(lambda: state_counts(pipeline, "run-k").get(State.APPLIED, 0) > 1000, timeout=90,
             what="the run under way")
    first.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
    first.wait(10)  # type: ignore[attr-defined]
    workers.start()  # a replacement joins, as an operator's supervisor would start one
    wait_for(lambda: settled(pipeline, "run-k", 6000), timeout=180, what="run-k settled after the kill",
             alive=workers.alive)
    counts = state_counts(pipeline, "run-k")
    assert State.QUEUED not in counts and State.APPLYING not in counts
    assert counts.get(State.APPLIED, 0) + counts.get(State.NO_CHANGES, 0) == 6000
    stats = target.stats()
    assert stats["duplicate_applies"] == 0
    assert stats["applied"] == 6000


def _without_metadata(entities: list[dict]) -> list[dict]:
    return [strip_metadata(e) for e in entities]
