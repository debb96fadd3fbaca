"""Retry tiers, dead letters and the circuit breaker, end to end: real Kafka, Postgres, the
reference target with injected faults, and `streams worker` processes. Tiers of seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter

import orjson
import pytest
from confluent_kafka import Producer

from streams.kafka import headers
from streams.kafka.admin import create_topics
from streams.kafka.config import confluent_config
from streams.kafka.topics import topic_names, topology
from streams.pipeline.hashing import entity_hash
from streams.pipeline.outcomes import State
from streams.records import WorkItem, WorkRecord
from streams.settings import Settings, to_env
from streams.target.faults import Faults
from streams.target.launch import TargetProcess
from tests.helpers import consume_all, rows, send_run, settled, state_counts, wait_for
from tests.integration.conftest import Workers

pytestmark = pytest.mark.integration


def _sites(count: int, prefix: str) -> list[dict]:
    return [{"object_type": "dcim.site", "entity": {"name": f"{prefix}-{n}", "slug": f"{prefix}-{n}"}}
            for n in range(count)]


def _with_tiers(settings: Settings, tiers: str, **more: object) -> Settings:
    custom = settings.model_copy(update={"retry_tiers": Settings(retry_tiers=tiers).retry_tiers, **more})
    create_topics(custom, topology(custom))
    return custom


def _ids(settings: Settings, run_id: str) -> list[str]:
    return [str(r[0]) for r in rows(settings, "SELECT id FROM ingestion_logs WHERE run_id = %s", (run_id,))]


def _one_value_per_header(message: object) -> None:
    keys = Counter(key for key, _ in message.headers() or ())  # type: ignore[attr-defined]
    assert all(count == 1 for count in keys.values()), keys


def test_fails_twice_then_applies_after_exactly_three_attempts_never_early(
        pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    target.set_faults(Faults(fail_first=2))
    workers.start()
    send_run(pipeline, "run-t2", _sites(5, "t2"))
    wait_for(lambda: settled(pipeline, "run-t2", 5), timeout=60, what="run-t2 settled", alive=workers.alive)
    assert state_counts(pipeline, "run-t2") == {State.APPLIED: 5}
    assert {a for (a,) in rows(pipeline, "SELECT attempts FROM ingestion_logs")} == {3}
    tiers = pipeline.retry_tiers
    for entity_id in _ids(pipeline, "run-t2"):
        first, second, third = target.receipts(entity_id)
        # Measured at the target: each retry came no earlier than its tier's delay.
        assert second - first >= tiers[0]
        assert third - second >= tiers[1]
    names = topic_names(pipeline)
    for tier, expected_attempt in ((0, "1"), (1, "2")):
        for message in consume_all(pipeline, names.retry[tier], expect=1, timeout=10):
            found = headers.decode(message.headers())
            assert found[headers.ATTEMPT] == expected_attempt
            assert found[headers.ERROR_CLASS] == "transient"
            assert int(found[headers.DUE_AT]) >= int(found[headers.FIRST_FAILED_AT])
            _one_value_per_header(message)


def test_always_transient_ends_errored_after_the_last_tier(
        pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    target.set_faults(Faults(transient_rate=1.0))
    workers.start()
    send_run(pipeline, "run-tx", _sites(3, "tx"))
    wait_for(lambda: settled(pipeline, "run-tx", 3), timeout=60, what="run-tx settled", alive=workers.alive)
    assert state_counts(pipeline, "run-tx") == {State.ERRORED: 3}
    for attempts, error in rows(pipeline, "SELECT attempts, last_error FROM ingestion_logs"):
        assert attempts == 3
        assert error["class"] == "transient" and error["message"].startswith("apply:")
    dead = consume_all(pipeline, topic_names(pipeline).dlq, expect=1, timeout=10)
    found = headers.decode(dead[0].headers())
    assert found[headers.ERROR_CLASS] == "transient" and found[headers.ATTEMPT] == "3"
    _one_value_per_header(dead[0])


def test_retry_after_picks_the_first_tier_at_least_that_long(
        pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    custom = _with_tiers(pipeline, "2s,6s,12s", breaker_threshold=100)
    target.set_faults(Faults(status_rate=1.0, status_code=429, retry_after=5))
    workers.start(custom)
    send_run(custom, "run-ra", _sites(3, "ra"))
    names = topic_names(custom)
    waiting = consume_all(custom, names.retry[1], expect=1, timeout=30)
    assert len(waiting) == 1
    found = headers.decode(waiting[0].headers())
    assert found[headers.HTTP_STATUS] == "429"
    assert int(found[headers.DUE_AT]) - int(found[headers.FIRST_FAILED_AT]) >= 6000
    assert consume_all(custom, names.retry[0], expect=1, timeout=2) == []
    target.set_faults(Faults())
    wait_for(lambda: settled(custom, "run-ra", 3), timeout=60, what="run-ra settled", alive=workers.alive)
    assert state_counts(custom, "run-ra") == {State.APPLIED: 3}
    due_at = int(found[headers.DUE_AT]) / 1000
    for entity_id in _ids(custom, "run-ra"):
        # The 429s were refused before the target looked at the entities: one receipt, on time.
        (received,) = target.receipts(entity_id)
        assert received >= due_at


def test_an_entity_that_breaks_the_target_is_isolated_and_its_siblings_apply_at_once(
        pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    """As NetBox's plugin: a 500 for the whole request, the entries before the poison committed."""
    custom = pipeline.model_copy(update={"batch_size": 100, "breaker_threshold": 1})
    target.set_faults(Faults(poison_pattern="poison-slug"))
    entities = _sites(99, "ok")
    entities.insert(37, {"object_type": "dcim.site", "entity": {"name": "bad", "slug": "poison-slug"}})
    workers.start(custom)
    send_run(custom, "run-poison", entities, batch_size=100)
    wait_for(lambda: settled(custom, "run-poison", 100), timeout=60, what="run-poison settled",
             alive=workers.alive)
    counts = state_counts(custom, "run-poison")
    # The entries the 500 had committed answer "no changes" when they are sent again.
    assert counts[State.ERRORED] == 1 and counts[State.APPLIED] + counts.get(State.NO_CHANGES, 0) == 99
    (error, attempts) = rows(custom, "SELECT last_error, attempts FROM ingestion_logs WHERE state = 7")[0]
    assert error["class"] == "transient" and error["http_status"] == 500
    assert attempts == 3  # it climbed every tier (2s, 4s): a poison is not told from a crash at once
    siblings = rows(custom, "SELECT DISTINCT attempts FROM ingestion_logs WHERE state <> 7")
    assert siblings == [(1,)]  # every sibling applied on its first attempt
    assert "circuit breaker opened" not in workers.logs()  # one poison never opens it


def test_a_refused_request_is_bisected_and_only_the_refused_entity_is_dead_lettered(
        pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    custom = pipeline.model_copy(update={"batch_size": 100})
    target.set_faults(Faults(poison_pattern="poison-slug", poison_status=422))
    entities = _sites(99, "ok")
    entities.insert(37, {"object_type": "dcim.site", "entity": {"name": "bad", "slug": "poison-slug"}})
    workers.start(custom)
    send_run(custom, "run-refused", entities, batch_size=100)
    wait_for(lambda: settled(custom, "run-refused", 100), timeout=60, what="run-refused settled",
             alive=workers.alive)
    assert state_counts(custom, "run-refused") == {State.APPLIED: 99, State.ERRORED: 1}
    (error,) = rows(custom, "SELECT last_error FROM ingestion_logs WHERE state = 7")[0]
    assert error["class"] == "permanent" and error["http_status"] == 422


def test_an_outage_opens_the_breaker_and_nothing_reaches_the_dlq(
        pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    custom = _with_tiers(pipeline, "40s,80s", breaker_threshold=3, breaker_cooldown=2.0,
                         breaker_max_cooldown=4.0)
    target.set_faults(Faults(outage=True))
    workers.start(custom)
    send_run(custom, "run-out", _sites(2000, "out"), batch_size=250)
    wait_for(lambda: "circuit breaker opened" in workers.logs(), timeout=60, what="the breaker to open",
             alive=workers.alive)
    time.sleep(30)  # the outage itself: the scenario, not a synchronisation
    target.set_faults(Faults())
    wait_for(lambda: settled(custom, "run-out", 2000), timeout=120, what="run-out settled after the outage",
             alive=workers.alive)
    assert state_counts(custom, "run-out") == {State.APPLIED: 2000}
    assert consume_all(custom, topic_names(custom).dlq, expect=1, timeout=3) == []


def test_records_waiting_in_a_tier_survive_a_worker_restart(
        pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    custom = _with_tiers(pipeline, "8s,16s")
    target.set_faults(Faults(fail_first=1))
    first = workers.start(custom)
    send_run(custom, "run-rs", _sites(4, "rs"))
    waiting = consume_all(custom, topic_names(custom).retry[0], expect=1, timeout=30)
    assert waiting
    first.terminate()
    first.wait(30)
    workers.start(custom)
    wait_for(lambda: settled(custom, "run-rs", 4), timeout=60, what="run-rs settled after the restart",
             alive=workers.alive)
    assert state_counts(custom, "run-rs") == {State.APPLIED: 4}
    assert {a for (a,) in rows(custom, "SELECT attempts FROM ingestion_logs")} == {2}
    for entity_id in _ids(custom, "run-rs"):
        first_at, second_at = target.receipts(entity_id)
        assert second_at - first_at >= 8.0
    _one_value_per_header(waiting[0])


def test_waiting_longer_than_max_poll_interval_causes_no_rebalance(
        pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    # The broker refuses session timeouts under 6 s, so the poll interval is set just above it.
    custom = _with_tiers(pipeline, "15s", max_poll_interval=7.0)
    target.set_faults(Faults(fail_first=1))
    workers.start(custom)
    send_run(custom, "run-mp", _sites(2, "mp"))
    wait_for(lambda: settled(custom, "run-mp", 2), timeout=60, what="run-mp settled", alive=workers.alive)
    assert state_counts(custom, "run-mp") == {State.APPLIED: 2}
    changes = [line for line in workers.logs().splitlines() if "retry tiers rebalanced" in line]
    assert len(changes) == 1 and '"assign"' in changes[0], changes


def test_only_the_waiting_partition_pauses(pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    """Two partitions of one tier: a record due late on partition 0 holds back only what is
    behind it on partition 0; partition 1's record is processed on time."""
    names = topic_names(pipeline)
    now_ms = int(time.time() * 1000)
    plan = {"late": (0, now_ms + 9000), "behind": (0, now_ms + 1000), "other": (1, now_ms + 1000)}
    records = {}
    for label, (_, _) in plan.items():
        entity = {"site": {"name": label, "slug": f"pp-{label}"}}
        row_id = str(uuid.uuid4())
        work = WorkRecord("run-pp", len(records), (WorkItem(row_id, "dcim.site", entity),), attempt=2)
        rows(pipeline, "INSERT INTO ingestion_logs (id, request_id, run_id, batch, object_type, entity, entity_hash,"
                       " state, attempts, claimed_by, source_topic, source_partition, source_offset)"
                       " VALUES (%s, 'r', 'run-pp', %s, 'dcim.site', %s, %s, 9, 1, %s, 'ingest', 0, 0) RETURNING id",
             (row_id, work.batch, orjson.dumps(entity).decode(), entity_hash("dcim.site", entity), work.work_id))
        records[label] = (row_id, work)
    producer = Producer(confluent_config(pipeline))
    for label in ("late", "behind", "other"):
        partition, due_at = plan[label]
        producer.produce(names.retry[0], value=records[label][1].encode(), partition=partition,
                         headers=[(headers.DUE_AT, str(due_at).encode()), (headers.ATTEMPT, b"1")])
    assert producer.flush(10) == 0
    workers.start()
    wait_for(lambda: settled(pipeline, "run-pp", 3), timeout=60, what="run-pp settled", alive=workers.alive)
    received = {label: target.receipts(records[label][0])[0] * 1000 for label in plan}
    assert plan["other"][1] <= received["other"] < plan["late"][1]  # not held back by partition 0
    assert received["late"] >= plan["late"][1]  # never early
    assert received["behind"] >= received["late"]  # behind the late record on its partition


def test_replay_after_the_fix_applies_every_dead_letter_of_the_run(
        pipeline: Settings, workers: Workers, target: TargetProcess) -> None:
    target.set_faults(Faults(permanent_rate=0.3, seed=5))
    workers.start()
    send_run(pipeline, "run-fix", _sites(40, "fix"))
    wait_for(lambda: settled(pipeline, "run-fix", 40), timeout=60, what="run-fix settled", alive=workers.alive)
    errored = state_counts(pipeline, "run-fix").get(State.ERRORED, 0)
    assert 0 < errored < 40
    target.set_faults(Faults())  # the fix

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}, **to_env(pipeline)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streams", "dlq", *args], env=env, capture_output=True,
                              text=True, timeout=120, check=False)

    audit = "SELECT count(*) FROM dlq_replays"
    dry = cli("replay", "--run", "run-fix", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert state_counts(pipeline, "run-fix")[State.ERRORED] == errored  # a dry run changes nothing
    assert rows(pipeline, audit)[0][0] == 0

    first = cli("replay", "--run", "run-fix")
    assert first.returncode == 0, first.stderr
    wait_for(lambda: state_counts(pipeline, "run-fix") == {State.APPLIED: 40}, timeout=60,
             what="every dead letter applied after the replay", alive=workers.alive)
    assert rows(pipeline, "SELECT count(*) FROM ingestion_logs WHERE requeued_from_state = 7")[0][0] == errored

    second = cli("replay", "--run", "run-fix")
    assert second.returncode == 0, second.stderr
    replays = rows(pipeline, "SELECT replayed FROM dlq_replays ORDER BY started_at")
    assert len(replays) == 2  # an audit row per replay, none for the dry run
    assert replays[0][0] > 0 and replays[1][0] == 0  # the second replay replays nothing
    assert state_counts(pipeline, "run-fix") == {State.APPLIED: 40}
