"""`streams dlq` against a real broker and Postgres.

The workers are not needed: ERRORED rows are inserted with SQL, and the dead letters are
produced here in the shapes the agents write (schemas/headers.md, streams.records).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Message, Producer
from psycopg.types.json import Jsonb

from streams.dlq import DlqError
from streams.dlq.replay import ReplayOptions, dry_run, replay
from streams.dlq.select import Filters
from streams.dlq.sender import Sender
from streams.kafka import headers as h
from streams.kafka.config import confluent_config
from streams.kafka.topics import topic_names
from streams.records import RunEvent, WorkItem, WorkRecord
from streams.settings import Settings, to_env
from tests.helpers import consume_all, end_offsets, rows

pytestmark = pytest.mark.integration

ERRORED, QUEUED, APPLIED = 7, 1, 3
ME = "tester@ci"


# --- fixtures: rows and dead letters ------------------------------------------------------------

def insert_rows(settings: Settings, run_id: str, batch: int, object_types: list[str], *,
                state: int = ERRORED) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in object_types]
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:  # type: ignore[union-attr]
        for entity_id, object_type in zip(ids, object_types, strict=True):
            conn.execute(
                "INSERT INTO ingestion_logs (id, request_id, run_id, batch, object_type, entity, entity_hash,"
                " state, attempts, last_error, source_topic, source_partition, source_offset)"
                " VALUES (%s, 'req', %s, %s, %s, %s, %s, %s, 3, %s, 'ingest', 0, 0)",
                (entity_id, run_id, batch, object_type, Jsonb({"name": entity_id[:8]}), os.urandom(32), state,
                 Jsonb({"class": "permanent", "message": "plan: bad"})))
    return ids


def work_dead_letter(run_id: str, batch: int, ids: list[str], object_types: list[str], *,
                     error_class: str = "permanent", http_status: int | None = 422, attempt: int = 3,
                     replay_id: str | None = None) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of a work record as plan-apply or the last tier dead-letters it."""
    items = tuple(WorkItem(i, t, {"name": i[:8]}) for i, t in zip(ids, object_types, strict=True))
    errors = {i: {"class": error_class, "message": "plan: invalid slug", "http_status": http_status}
              for i in ids}
    record = WorkRecord(run_id, batch, items, attempt, replay_id, errors)
    now = int(time.time() * 1000)
    values = {h.ATTEMPT: str(attempt), h.FIRST_FAILED_AT: str(now - 60_000), h.ERROR_CLASS: error_class,
              h.ERROR: "plan: invalid slug", h.ORIGIN_TOPIC: "x.ingest.work", h.ORIGIN_PARTITION: "0",
              h.ORIGIN_OFFSET: str(batch), h.RUN_ID: run_id}
    if http_status is not None:
        values[h.HTTP_STATUS] = str(http_status)
    if replay_id is not None:
        values[h.REPLAY_ID] = replay_id
    return f"{run_id}:{batch}".encode(), record.encode(), [(k, v.encode()) for k, v in values.items()]


def ingest_dead_letter(settings: Settings, value: bytes) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    values = {h.ATTEMPT: "1", h.FIRST_FAILED_AT: str(int(time.time() * 1000)), h.ERROR_CLASS: "invalid",
              h.ERROR: "not JSON", h.ORIGIN_TOPIC: topic_names(settings).ingest, h.ORIGIN_PARTITION: "0",
              h.ORIGIN_OFFSET: "12"}
    return b"request-1", value, [(k, v.encode()) for k, v in values.items()]


def produce_dead_letters(settings: Settings, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]], *,
                         age_ms: int = 0) -> None:
    producer = Producer(confluent_config(settings, **{"enable.idempotence": True, "acks": "all"}))
    stamp = int(time.time() * 1000) - age_ms
    for key, value, headers in records:
        producer.produce(topic_names(settings).dlq, key=key, value=value, headers=headers, timestamp=stamp)
    assert producer.flush(30) == 0


def states(settings: Settings, ids: list[str]) -> dict[str, tuple[int, int | None, int]]:
    found = rows(settings, "SELECT id::text, state, requeued_from_state, attempts FROM ingestion_logs"
                           " WHERE id = ANY(%s::uuid[])", (ids,))
    return {row[0]: (row[1], row[2], row[3]) for row in found}


def read(settings: Settings, topic: str, expect: int) -> list[Message]:
    """Every record on `topic`; there must be exactly `expect`."""
    messages = consume_all(settings, topic, expect=expect, timeout=30) if expect else []
    assert len(messages) == expect == end_offsets(settings, topic), topic
    return messages


def replays(settings: Settings) -> list[tuple[Any, ...]]:
    return rows(settings, "SELECT id::text, filters, destination, requested_by, again, matched, replayed,"
                          " skipped, resent, error, finished_at IS NOT NULL"
                          " FROM dlq_replays ORDER BY started_at")


def options(**kwargs: Any) -> ReplayOptions:
    return ReplayOptions(requested_by=ME, **kwargs)


def cli(settings: Settings, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("STREAMS_")}
    env.update(to_env(settings))
    env["STREAMS_DLQ_REQUESTED_BY"] = ME
    return subprocess.run([sys.executable, "-m", "streams", "dlq", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


# --- tests --------------------------------------------------------------------------------------

def test_replay_of_a_run_requeues_its_errored_rows_once(topics: Settings, tmp_path: Path) -> None:
    settings = topics
    names = topic_names(settings)
    a = insert_rows(settings, "R", 0, ["dcim.site", "dcim.site", "dcim.device"])
    b = insert_rows(settings, "R", 1, ["dcim.site"])
    applied = insert_rows(settings, "R", 1, ["dcim.site"], state=APPLIED)  # applied since it died
    other = insert_rows(settings, "S", 0, ["dcim.site"])
    produce_dead_letters(settings, [
        work_dead_letter("R", 0, a, ["dcim.site", "dcim.site", "dcim.device"]),
        work_dead_letter("R", 1, b + applied, ["dcim.site", "dcim.site"], error_class="transient",
                         http_status=503),
        work_dead_letter("S", 0, other, ["dcim.site"]),
    ])

    listed = cli(settings, "ls", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "permanent" in listed.stdout and "transient" in listed.stdout and "dcim.device" in listed.stdout
    shown = cli(settings, "show", "--run", "R", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert a[0] in shown.stdout and "plan: invalid slug" in shown.stdout and "x-error-class" in shown.stdout
    assert a[0][:8] not in shown.stdout.replace(a[0], "")  # ids, never the bodies (which hold id[:8])
    assert "2 of 2 matching dead letters shown" in shown.stdout

    done = cli(settings, "replay", "--run", "R", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "replayed" in done.stdout

    [audit] = replays(settings)
    replay_id = audit[0]
    assert audit[1:] == ({"runs": ["R"]}, names.work, ME, False, 2, 2, 0, 0, None, True)
    assert states(settings, a + b) == {i: (QUEUED, ERRORED, 0) for i in a + b}  # fresh attempts
    assert states(settings, applied + other) == {applied[0]: (APPLIED, None, 3), other[0]: (ERRORED, None, 3)}

    work = read(settings, names.work, 2)
    assert all(dict(m.headers()) == {h.REPLAY_ID: replay_id.encode()} for m in work)
    records = sorted((WorkRecord.decode(m.value()) for m in work), key=lambda r: r.batch)
    assert [[i.id for i in r.items] for r in records] == [a, b]  # the applied entity is left out
    assert all(r.attempt == 1 and r.replay_id == replay_id and r.run_id == "R" for r in records)
    events = sorted((RunEvent.decode(m.value()) for m in read(settings, names.run_events, 2)),
                    key=lambda e: e.batch or 0)
    assert [(e.type, e.run_id, e.batch, e.counts) for e in events] == [
        ("entities_requeued", "R", 0, {"requeued": 3, "retry_in": 0}),
        ("entities_requeued", "R", 1, {"requeued": 1, "retry_in": 0})]
    assert all(e.event_id.startswith(f"requeued:{replay_id}:") for e in events)
    assert rows(settings, "SELECT status, count(*) FROM dlq_replay_records GROUP BY 1") == [("sent", 2)]

    # The same replay again: nothing to do, and it says why.
    second = replay(settings, Filters(runs=("R",)), options())
    assert (second.matched, second.replayed) == (2, 0)
    assert second.skipped == {"already replayed (use --again)": 2}
    read(settings, names.work, 2)
    assert replays(settings)[1][5:] == (2, 0, 2, 0, None, True)

    # They failed again (the DLQ agent marked them ERRORED): --again sends them once more.
    rows(settings, "UPDATE ingestion_logs SET state = 7 WHERE id = ANY(%s::uuid[]) RETURNING id", (a,))
    third = replay(settings, Filters(runs=("R",)), options(again=True))
    assert (third.replayed, third.entities, dict(third.skipped)) == (1, 3, {"no ERRORED entity left": 1})
    [last] = [m for m in read(settings, names.work, 3)
              if dict(m.headers())[h.REPLAY_ID] == third.replay_id.encode()]  # type: ignore[union-attr]
    assert [i.id for i in WorkRecord.decode(last.value()).items] == a
    assert replays(settings)[2][4:8] == (True, 2, 1, 1)


def test_dry_run_changes_nothing(topics: Settings, tmp_path: Path) -> None:
    settings = topics
    names = topic_names(settings)
    ids = insert_rows(settings, "D", 0, ["dcim.site", "dcim.rack"])
    produce_dead_letters(settings, [work_dead_letter("D", 0, ids, ["dcim.site", "dcim.rack"]),
                                    ingest_dead_letter(settings, b"\x00garbage")])
    before = states(settings, ids)
    dumped = rows(settings, "SELECT * FROM ingestion_logs ORDER BY id")

    done = cli(settings, "replay", "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "dry run" in done.stdout and "would replay 1 dead letters (2 entities)" in done.stdout
    assert "permanent" in done.stdout and "ingest record (select it with --error-class)" in done.stdout
    assert "dcim.rack, dcim.site" in done.stdout  # a sample

    assert states(settings, ids) == before
    assert rows(settings, "SELECT * FROM ingestion_logs ORDER BY id") == dumped
    assert replays(settings) == [] and rows(settings, "SELECT count(*) FROM dlq_replay_records") == [(0,)]
    for topic in (names.work, names.ingest, names.run_events, *names.retry):
        assert end_offsets(settings, topic) == 0, topic
    assert end_offsets(settings, names.dlq) == 2


def test_filters_select_what_is_replayed(topics: Settings) -> None:
    settings = topics
    names = topic_names(settings)
    old = insert_rows(settings, "F", 0, ["dcim.site"])
    mixed = insert_rows(settings, "F", 1, ["dcim.site", "dcim.device", "dcim.device"])
    gateway = insert_rows(settings, "F", 2, ["dcim.site"])
    produce_dead_letters(settings, [work_dead_letter("F", 0, old, ["dcim.site"])], age_ms=3 * 3_600_000)
    produce_dead_letters(settings, [
        work_dead_letter("F", 1, mixed, ["dcim.site", "dcim.device", "dcim.device"]),
        work_dead_letter("F", 2, gateway, ["dcim.site"], error_class="transient", http_status=503),
    ])

    by_class = replay(settings, Filters(error_classes=("transient",)), options())
    assert (by_class.matched, by_class.replayed, by_class.entities) == (1, 1, 1)
    assert states(settings, gateway)[gateway[0]][0] == QUEUED

    by_type = replay(settings, Filters(object_types=("dcim.device",)), options())
    assert (by_type.matched, by_type.replayed, by_type.entities) == (1, 1, 2)
    assert {i: s[0] for i, s in states(settings, mixed).items()} == {
        mixed[0]: ERRORED, mixed[1]: QUEUED, mixed[2]: QUEUED}

    by_status = replay(settings, Filters(http_statuses=(503,)), options())
    assert by_status.matched == 1 and by_status.replayed == 0  # the gateway record, replayed above

    since = dry_run(settings, Filters(since=int(time.time() * 1000) - 3_600_000), options(again=True))
    assert (since.matched, since.replayed, since.entities) == (2, 1, 1)  # only the mixed site is left
    assert states(settings, old)[old[0]][0] == ERRORED

    until = replay(settings, Filters(until=int(time.time() * 1000) - 3_600_000), options())
    assert (until.matched, until.replayed, until.entities) == (1, 1, 1)
    assert states(settings, old)[old[0]][0] == QUEUED

    work = read(settings, names.work, 3)
    assert sorted(len(WorkRecord.decode(m.value()).items) for m in work) == [1, 1, 2]
    assert [set(r[1]) for r in replays(settings)] == [
        {"error_classes"}, {"object_types"}, {"http_statuses"}, {"until"}]


def test_replay_to_the_first_tier_keeps_the_attempts_and_waits(topics: Settings, tmp_path: Path) -> None:
    settings = topics
    names = topic_names(settings)
    ids = insert_rows(settings, "T", 4, ["dcim.site", "dcim.site"])
    produce_dead_letters(settings, [work_dead_letter("T", 4, ids, ["dcim.site"] * 2, error_class="transient",
                                                     http_status=503, attempt=3, replay_id="earlier")])
    started = int(time.time() * 1000)
    done = cli(settings, "replay", "--to", "tier", "--error-class", "transient", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [audit] = replays(settings)
    assert audit[2] == names.retry[0]

    [message] = read(settings, names.retry[0], 1)
    sent = h.decode(message.headers())
    assert len(message.headers()) == len(sent)  # each header once
    assert sent[h.REPLAY_ID] == audit[0]  # the new replay id replaced the earlier one
    # Due one tier delay (2s in the tests) after it was sent.
    assert int(sent[h.DUE_AT]) >= started + 2000
    assert 1500 <= int(sent[h.DUE_AT]) - message.timestamp()[1] <= 2000
    assert (sent[h.ATTEMPT], sent[h.ERROR_CLASS], sent[h.HTTP_STATUS]) == ("3", "transient", "503")
    assert sent[h.RUN_ID] == "T"
    record = WorkRecord.decode(message.value())
    assert (record.attempt, record.replay_id, [i.id for i in record.items]) == (3, audit[0], ids)
    assert states(settings, ids) == {i: (QUEUED, ERRORED, 3) for i in ids}  # attempts kept
    [event] = read(settings, names.run_events, 1)
    assert RunEvent.decode(event.value()).counts == {"requeued": 2, "retry_in": 2}
    assert end_offsets(settings, names.work) == 0


def test_original_ingest_records_go_back_only_when_selected(topics: Settings) -> None:
    settings = topics
    names = topic_names(settings)
    produce_dead_letters(settings, [ingest_dead_letter(settings, b"\x00garbage")])
    skipped = replay(settings, Filters(), options())
    assert skipped.replayed == 0
    assert skipped.skipped == {"ingest record (select it with --error-class)": 1}
    chosen = replay(settings, Filters(error_classes=("invalid",)), options())
    assert chosen.replayed == 1
    [message] = read(settings, names.ingest, 1)
    assert (message.key(), message.value()) == (b"request-1", b"\x00garbage")
    assert message.headers() == [(h.REPLAY_ID, chosen.replay_id.encode())]  # type: ignore[union-attr]
    assert end_offsets(settings, names.run_events) == 0  # no rows, so no run event
    assert replay(settings, Filters(error_classes=("invalid",)), options()).replayed == 0


def test_a_replay_interrupted_before_its_records_were_confirmed_is_finished_by_the_next(
        topics: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = topics
    names = topic_names(settings)
    first_ids = insert_rows(settings, "P", 0, ["dcim.site"])
    second_ids = insert_rows(settings, "P", 1, ["dcim.site", "dcim.device"])
    produce_dead_letters(settings, [work_dead_letter("P", 0, first_ids, ["dcim.site"]),
                                    work_dead_letter("P", 1, second_ids, ["dcim.site", "dcim.device"])])

    def broken_send(self: Sender, *args: Any) -> None:
        raise DlqError("broker went away")

    with monkeypatch.context() as patch:  # the rows are requeued, then nothing reaches the broker
        patch.setattr(Sender, "send", broken_send)
        with pytest.raises(DlqError, match="broker went away"):
            replay(settings, Filters(runs=("P",)), options())
    [crashed] = replays(settings)
    assert crashed[5:] == (2, 0, 0, 0, "DlqError: broker went away", True)
    assert rows(settings, "SELECT status, count(*) FROM dlq_replay_records GROUP BY 1") == [("pending", 2)]
    requeued = first_ids + second_ids
    assert states(settings, requeued) == {i: (QUEUED, ERRORED, 0) for i in requeued}

    # The next replay, for another run and without --again, still finishes the interrupted one.
    done = cli(settings, "replay", "--run", "someone-else", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sent 2 dead letters again" in done.stdout and crashed[0] in done.stdout
    work = read(settings, names.work, 2)
    assert {dict(m.headers())[h.REPLAY_ID].decode() for m in work} == {crashed[0]}
    assert sorted(len(WorkRecord.decode(m.value()).items) for m in work) == [1, 2]
    events = [RunEvent.decode(m.value()) for m in read(settings, names.run_events, 2)]
    assert all(e.event_id.startswith(f"requeued:{crashed[0]}:") for e in events)
    resumed = replays(settings)[1]
    assert resumed[5:] == (0, 0, 0, 2, None, True)
    assert rows(settings, "SELECT status, sent_by::text, count(*) FROM dlq_replay_records GROUP BY 1, 2") == [
        ("sent", resumed[0], 2)]
    assert replay(settings, Filters(runs=("P",)), options()).replayed == 0


def test_only_one_replay_at_a_time(topics: Settings) -> None:
    settings = topics
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:  # type: ignore[union-attr]
        conn.execute("SELECT pg_advisory_lock(%s)", (0x444C5152,))
        with pytest.raises(DlqError, match="another `streams dlq replay` is running"):
            replay(settings, Filters(), options())


def test_a_missing_topic_is_a_clear_error(settings: Settings, tmp_path: Path) -> None:
    done = cli(settings, "ls", cwd=tmp_path)
    assert done.returncode == 1
    assert "does not exist: run `streams topics create` first" in done.stderr
    bad = cli(settings, "show", "--since", "yesterday", cwd=tmp_path)
    assert bad.returncode == 2 and "STREAMS_DLQ_SINCE" in bad.stderr
