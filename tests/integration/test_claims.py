"""Two deliveries of one work record at once (a retry record sent twice after a crash, a worker
that lost its partition still applying): the later claim takes the rows, and the earlier
delivery settles nothing and reports nothing. Before claims carried a token, both settled: the
first wrote the rows, the second wrote nothing but still reported its own outcome under the
same event id, and when that report reached the run tracker first the batch was counted twice
and its run never completed. Real Postgres, the store the plan-apply agent uses."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

from streams.db.apply_store import ApplyStore, ClaimLost
from streams.db.database import Database
from streams.pipeline.apply import route
from streams.pipeline.hashing import entity_hash
from streams.pipeline.outcomes import EntityOutcome, ErrorClass, Failure, State
from streams.records import WorkItem, WorkRecord
from streams.settings import Settings
from tests.helpers import rows

pytestmark = pytest.mark.integration


def _queued(settings: Settings, run_id: str, count: int) -> WorkRecord:
    items = []
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:  # type: ignore[union-attr]
        for n in range(count):
            row_id, entity = str(uuid.uuid4()), {"site": {"name": f"{run_id}-{n}"}}
            conn.execute(
                "INSERT INTO ingestion_logs (id, request_id, run_id, batch, object_type, entity, entity_hash,"
                " source_topic, source_partition, source_offset) VALUES (%s, 'r', %s, 0, 'dcim.site', %s, %s,"
                " 'ingest', 0, %s)", (row_id, run_id, Jsonb(entity), entity_hash("dcim.site", entity), n))
            items.append(WorkItem(row_id, "dcim.site", entity))
    return WorkRecord(run_id, 0, tuple(items))


def _applied(work: WorkRecord) -> list[EntityOutcome]:
    return [EntityOutcome(item.id, State.APPLIED) for item in work.items]


def _failed(work: WorkRecord) -> list[EntityOutcome]:
    failure = Failure(ErrorClass.TRANSIENT, "apply: db_error")
    return [EntityOutcome(item.id, None, failure=failure) for item in work.items]


async def _two_deliveries(settings: Settings) -> None:
    work = _queued(settings, "twice", 4)
    db = Database(settings, name="tests")
    store = ApplyStore(db)
    try:
        first = await store.claim(work)
        second = await store.claim(work)  # the copy: takes the same rows over
        assert first.claimed == second.claimed == {item.id for item in work.items}
        assert first.token != second.token
        # The first copy's target call failed; it must not route the rows the second holds.
        with pytest.raises(ClaimLost):
            await store.settle(work, first, route(_failed(work), attempt=1, tiers=(1.0,), now_ms=0),
                               {0: [work.derived("+t0", work.items, attempt=2)]}, [])
        assert {s for (s,) in rows(settings, "SELECT state FROM ingestion_logs")} == {State.APPLYING}
        assert rows(settings, "SELECT count(*) FROM entity_events")[0][0] == 0
        await store.settle(work, second, route(_applied(work), attempt=1, tiers=(1.0,), now_ms=0), {}, [])
        assert {s for (s,) in rows(settings, "SELECT state FROM ingestion_logs")} == {State.APPLIED}
        # A third delivery, after the second settled, takes nothing and finds what was done.
        third = await store.claim(work)
        assert third.claimed == frozenset() and {r.state for r in third.routed} == {State.APPLIED}
        assert rows(settings, "SELECT max(attempts) FROM ingestion_logs")[0][0] == 1
    finally:
        await db.close()


def test_of_two_deliveries_of_one_record_only_the_later_claim_settles(settings: Settings) -> None:
    asyncio.run(_two_deliveries(settings))
