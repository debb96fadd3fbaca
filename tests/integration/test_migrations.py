"""Migrations on a real Postgres: idempotent, concurrent-safe, and the schema the spec asks for."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from streams.db.migrate import Migration, discover, migrate
from streams.errors import MigrationError

pytestmark = pytest.mark.integration

# Spec §3.3: every table with the columns it must have.
SPEC_COLUMNS = {
    "ingestion_logs": {
        "id", "request_id", "run_id", "batch", "object_type", "entity", "entity_hash", "state", "attempts",
        "last_error", "next_attempt_at", "duplicate_count", "last_seen", "requeued_from_state",
        "source_topic", "source_partition", "source_offset", "created_at", "updated_at",
    },
    "change_sets": {"id", "ingestion_log_id", "attempt", "created_at"},
    "changes": {"change_set_id", "change_type", "object_type", "object_id", "before", "data"},
    "ingest_runs": {
        "run_id", "revision", "batches_total", "batches_accepted", "batches_completed", "batches_failed",
        "entities_applied", "entities_no_changes", "entities_duplicates", "entities_in_retry",
        "entities_errored", "sealed_at", "completed_at",
    },
    "dlq_replays": {"id", "filters", "destination", "requested_by", "started_at", "replayed"},
}


def _fingerprint(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY 1, 2").fetchall()
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1").fetchall()
        constraints = conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE connamespace = 'public'::regnamespace ORDER BY 1").fetchall()
    return columns + indexes + constraints


def test_applying_twice_changes_nothing(database_url: str) -> None:
    # The fixture database is a copy of a migrated template: migrating again applies nothing.
    before = _fingerprint(database_url)
    assert migrate(database_url) == []
    assert _fingerprint(database_url) == before


def test_fresh_database_gets_every_migration_and_the_spec_tables(services, database_url: str) -> None:  # type: ignore[no-untyped-def]
    name = f"fresh_{uuid.uuid4().hex[:8]}"
    admin = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = database_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        assert migrate(url) == [m.version for m in discover()]
        with psycopg.connect(url) as conn:
            for table, wanted in SPEC_COLUMNS.items():
                have = {row[0] for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,))}
                assert wanted <= have, f"{table} lacks {wanted - have}"
        assert migrate(url) == []
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_state_numbers_are_constrained(database_url: str) -> None:
    insert = (
        "INSERT INTO ingestion_logs (id, request_id, run_id, batch, object_type, entity, entity_hash, state,"
        " source_topic, source_partition, source_offset) VALUES (%s, 'r', 'run', 0, 'dcim.site', '{}', '\\x00', %s,"
        " 'ingest', 0, 0)"
    )
    with psycopg.connect(database_url) as conn:
        for state in range(1, 10):
            conn.execute(insert, (uuid.uuid4(), state))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(insert, (uuid.uuid4(), 10))


def test_concurrent_runs_apply_each_migration_once(database_url: str) -> None:
    extra = Migration("9001", "concurrency_probe", "CREATE TABLE concurrency_probe (id int)")
    migrations = [*discover(), extra]
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(database_url, migrations))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sorted(results) == [[], [], [], ["9001"]]


def test_a_changed_migration_is_refused(database_url: str) -> None:
    first = discover()[0]
    edited = Migration(first.version, first.name, first.sql + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(database_url, [edited])
