"""The plan-apply agent: work records → bulk-plan-apply calls → states, change sets, run events.

Per work record: claim its rows (QUEUED or PENDING_RETRY → APPLYING under the record's work id,
committed at once so a crash leaves a visible claim), call the target with at most
STREAMS_BATCH_SIZE entities per request (the record's requests run concurrently, bounded by
STREAMS_HTTP_CONCURRENCY for the worker), then one transaction writes every state, change set
and change of the record. A redelivered record re-claims its own APPLYING rows and reports the
rows it already settled again; the target's idempotency by id makes the repeated call safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import faust
import orjson
from psycopg.types.json import Jsonb

from streams import metrics
from streams.agents.resources import Resources
from streams.db.queries import named
from streams.errors import InvalidRecord
from streams.kafka import headers
from streams.kafka.outbox import Outbox
from streams.pipeline.apply import Settlement, recount, settle, split
from streams.pipeline.outcomes import ErrorClass
from streams.records import WorkRecord, entities_settled
from streams.settings import Settings

log = logging.getLogger(__name__)
Q = named("apply")
COMMON = named("common")


@dataclass(frozen=True)
class ApplyTopics:
    run_events: faust.TopicT
    dlq: faust.TopicT


class PlanApplyAgent:
    def __init__(self, settings: Settings, topics: ApplyTopics, resources: Resources) -> None:
        self.settings = settings
        self.topics = topics
        self.resources = resources

    async def handle(self, events: Sequence[faust.types.EventT]) -> None:
        works = [_decode(event) for event in events]
        counts = await asyncio.gather(*(self.apply(work) for work in works))
        outbox = Outbox()
        for work, settled in zip(works, counts, strict=True):
            if settled:
                event = entities_settled(work, dict(settled))
                await outbox.send(self.topics.run_events, key=work.run_id.encode(), value=event.encode())
        await outbox.flush()

    async def apply(self, work: WorkRecord) -> Counter[str]:
        """Apply one work record; return the counts of its rows settled (now or before)."""
        pool = await self.resources.pool()
        ids = [uuid.UUID(item.id) for item in work.items]
        async with pool.connection() as conn, conn.transaction():
            claimed = {str(row[0]) for row in await (await conn.execute(
                Q["claim"], {"work_id": work.work_id, "ids": ids})).fetchall()}
            earlier = [state for _, state in await (await conn.execute(
                Q["settled_by_claim"], {"work_id": work.work_id, "ids": ids})).fetchall()]
        items = [item for item in work.items if item.id in claimed]
        settlement = Settlement()
        if items:
            target = self.resources.target()
            results = await asyncio.gather(*(target.bulk_plan_apply(body)
                                             for body in split(items, self.settings.batch_size)))
            settlement = settle(outcome for result in results for outcome in result.outcomes)
            await self._record(work, settlement)
        for name, count in settlement.counts.items():
            metrics.ENTITIES.labels(outcome=name).inc(count)
        log.info("work record applied", extra={
            "run": work.run_id, "batch": work.batch, "attempt": work.attempt, "claimed": len(items),
            "skipped": len(work.items) - len(items), **dict(settlement.counts)})
        return settlement.counts + recount(earlier)

    async def _record(self, work: WorkRecord, settlement: Settlement) -> None:
        pool = await self.resources.pool()
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(COMMON["prefer_hash_joins"])
            await conn.execute(Q["record_outcomes"], {
                "work_id": work.work_id, "ids": [uuid.UUID(i) for i in settlement.ids],
                "states": settlement.states,
                "errors": [_jsonb(error) for error in settlement.errors]})
            if settlement.change_sets:
                await conn.execute(Q["insert_change_sets"], {
                    "ids": [cs for cs, _ in settlement.change_sets],
                    "log_ids": [uuid.UUID(log_id) for _, log_id in settlement.change_sets],
                    "attempts": [work.attempt] * len(settlement.change_sets)})
            if settlement.changes:
                columns = list(zip(*settlement.changes, strict=True))
                await conn.execute(Q["insert_changes"], {
                    "change_set_ids": list(columns[0]), "seqs": list(columns[1]),
                    "change_types": list(columns[2]), "object_types": list(columns[3]),
                    "object_ids": list(columns[4]), "befores": [_jsonb(v) for v in columns[5]],
                    "datas": [_jsonb(v) for v in columns[6]]})

    async def dead_letter(self, event: faust.types.EventT, error: BaseException) -> None:
        message = event.message
        error_class = ErrorClass.INVALID if isinstance(error, InvalidRecord) else ErrorClass.PERMANENT
        incoming = headers.decode(message.headers)
        dlq_headers = headers.failure_headers(
            incoming, origin=headers.Origin(message.topic, message.partition, message.offset),
            attempt=int(incoming.get(headers.ATTEMPT, "1")), error_class=error_class,
            error=f"{type(error).__name__}: {error}", now_ms=_now_ms(), run_id=_run_id(message.value))
        outbox = Outbox()
        await outbox.send(self.topics.dlq, key=message.key, value=message.value or b"", headers=dlq_headers)
        await outbox.flush()
        metrics.DEAD_LETTERS.labels(error_class=error_class.value).inc()
        log.warning("work record dead-lettered", extra={
            "topic": message.topic, "partition": message.partition, "offset": message.offset,
            "error_class": error_class.value, "error": type(error).__name__})


def _decode(event: faust.types.EventT) -> WorkRecord:
    try:
        return WorkRecord.decode(event.message.value)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidRecord(f"not a work record: {type(exc).__name__}") from None


def _jsonb(value: object) -> object:
    return None if value is None else Jsonb(value)


def _run_id(value: bytes | None) -> str | None:
    try:
        data = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    return data.get("run_id") if isinstance(data, dict) else None


def _now_ms() -> int:
    return int(time.time() * 1000)
