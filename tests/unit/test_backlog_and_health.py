"""The backlog gauges set from one `streams status` reading, the leader-only export, and the
worker's health checks, with the readings and probes faked."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client import REGISTRY

from streams.agents import web
from streams.db.status_store import Count, DatabaseState, OpenRun
from streams.gates import GateName, Gates
from streams.kafka.topics import topic_names
from streams.settings import Settings
from streams.status import exporter
from streams.status.collect import GroupLag, PartitionLag, Status, TierState


def _settings() -> Settings:
    return Settings(kafka_bootstrap="127.0.0.1:1", database_url="postgresql://x@127.0.0.1:1/x",
                    topic_prefix="u.", retry_tiers="2s,4s")


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _status(settings: Settings) -> Status:
    names = topic_names(settings)
    first_seen = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return Status(
        taken_at=100.0,
        groups=[GroupLag(settings.app_id, names.ingest, (PartitionLag(names.ingest, 0, 5, 9),
                                                         PartitionLag(names.ingest, 1, 3, 3))),
                GroupLag(f"{settings.app_id}-retry", names.retry[1], (PartitionLag(names.retry[1], 0, 0, 2),))],
        tiers=[TierState(names.retry[0], 2.0, 0, None, 0), TierState(names.retry[1], 4.0, 2, 123.5, 1)],
        dlq_records=7,
        database=DatabaseState(
            rows=[Count("APPLIED", 10, None), Count("ERRORED", 4, None)], stuck={}, stuck_after=600.0,
            errored_by_class=[Count("permanent", 3, None), Count("weird", 1, None)], errored_by_run=[],
            open_runs=[OpenRun("r", first_seen, None, None, 1, 0, 0, 5, first_seen)], open_run_count=2))


def test_a_reading_sets_every_backlog_gauge_with_bounded_labels() -> None:
    settings = _settings()
    exporter.export(_status(settings), topic_names(settings))
    assert _value("streams_consumer_lag", topic="ingest") == 4
    assert _value("streams_consumer_lag", topic="retry-2") == 2
    assert _value("streams_tier_depth", tier="retry-2") == 2
    assert _value("streams_tier_next_due_timestamp_seconds", tier="retry-2") == 123.5
    assert _value("streams_tier_next_due_timestamp_seconds", tier="retry-1") == 0
    assert _value("streams_tier_partitions_paused", tier="retry-2") == 1
    assert _value("streams_dlq_topic_records") == 7
    assert _value("streams_rows", state="ERRORED") == 4
    # An error class outside the known set is folded, so a bad row cannot grow the label set.
    assert _value("streams_rows_errored", error_class="permanent") == 3
    assert _value("streams_rows_errored", error_class="other") == 1
    assert _value("streams_rows_errored", error_class="weird") is None
    assert _value("streams_open_runs") == 2
    assert _value("streams_oldest_open_run_timestamp_seconds") == datetime(2026, 1, 2, 3, 4, 5,
                                                                           tzinfo=UTC).timestamp()


def test_a_source_that_could_not_be_read_leaves_its_gauges_absent() -> None:
    settings = _settings()
    exporter.export(_status(settings), topic_names(settings))
    exporter.export(Status(taken_at=1.0), topic_names(settings))  # Kafka and Postgres both unread
    assert _value("streams_consumer_lag", topic="ingest") is None
    assert _value("streams_rows", state="APPLIED") is None


def test_only_the_leader_exports_and_a_former_leader_clears_its_gauges() -> None:
    settings = _settings()
    leader = [True]
    readings = []

    def read(given: Settings) -> Status:
        readings.append(given)
        return _status(given)

    backlog = exporter.BacklogExporter(settings, lambda: leader[0], read)
    asyncio.run(backlog.once())
    assert backlog.passes == 1 and _value("streams_dlq_topic_records") == 7
    leader[0] = False
    asyncio.run(backlog.once())
    assert len(readings) == 1 and _value("streams_dlq_topic_records") == 0
    assert _value("streams_rows", state="APPLIED") is None


def test_a_reading_that_fails_is_counted_and_changes_nothing() -> None:
    settings = _settings()
    before = _value("streams_backlog_passes_total", outcome="error") or 0

    def broken(_: Settings) -> Status:
        raise ConnectionError("down")

    backlog = exporter.BacklogExporter(settings, lambda: True, broken)
    asyncio.run(backlog.once())
    assert backlog.passes == 0
    assert _value("streams_backlog_passes_total", outcome="error") == before + 1


def test_the_target_check_names_the_oldest_gate_of_the_breaker() -> None:
    gates = Gates(clock=lambda: 50.0)
    assert web.target_check(gates).ok
    gates.hold(GateName.BREAKER_OPEN, "target", "503 from the target")
    gates.hold(GateName.DATABASE_UNAVAILABLE, "postgres", "down")  # not the target's
    check = web.target_check(gates)
    assert (check.ok, check.since) == (False, 50.0)
    assert check.detail == "breaker_open: 503 from the target"


@pytest.mark.parametrize(("postgres", "kafka", "target", "ready"), [
    (True, True, True, True), (False, True, True, False), (True, False, True, False), (True, True, False, False)])
def test_health_reports_each_check_and_ready_needs_all_three(postgres: bool, kafka: bool, target: bool,
                                                            ready: bool) -> None:
    async def pg() -> bool:
        return postgres

    health = web.Health(pg, lambda: web.Check(kafka, "k"), lambda: web.Check(target, "t", 9.0 if not target else None))
    checks = asyncio.run(health.checks())
    assert {name: check.ok for name, check in checks.items()} == {"postgres": postgres, "kafka": kafka,
                                                                  "target": target}
    assert all(check.ok for check in checks.values()) is ready
    assert _value("streams_worker_healthy") == (1 if ready else 0)


def test_kafka_and_postgres_are_asked_at_most_once_per_cache_period() -> None:
    asked = []

    async def pg() -> bool:
        asked.append("postgres")
        return True

    def kafka() -> web.Check:
        asked.append("kafka")
        return web.Check(True, "k")

    health = web.Health(pg, kafka, lambda: web.Check(True, "t"))

    async def twice() -> None:
        await health.checks()
        await health.checks()

    asyncio.run(twice())
    assert sorted(asked) == ["kafka", "postgres"]


def test_the_endpoints_answer_live_ready_and_the_full_report() -> None:
    class FakeDb:
        async def healthy(self) -> bool:
            return False

    class FakeResources:
        db = FakeDb()

    app = web.health_app(_settings(), FakeResources(), with_target=False,  # type: ignore[arg-type]
                         kafka=lambda: web.Check(True, "k"))

    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://worker") as client:
            return await client.get(path)

    assert asyncio.run(get("/health/live")).status_code == 200
    ready = asyncio.run(get("/health/ready"))
    assert ready.status_code == 503 and "postgres" in ready.json()["failing"]
    full = asyncio.run(get("/health")).json()
    assert full["live"] is True and full["ready"] is False
    assert full["checks"]["postgres"] == {"ok": False, "detail": "does not answer"}
    assert full["checks"]["target"]["ok"] is True
    scraped = asyncio.run(get("/metrics"))
    assert scraped.status_code == 200 and 'streams_gates_open{gate="breaker_open"}' in scraped.text
