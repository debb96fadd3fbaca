"""The dead-letter agent: rows of dead-lettered work records become ERRORED.

Records on `ingest.dlq` are either work records (from plan-apply or the last retry tier: their
rows are FAILED and now become ERRORED, and the run tracker is told) or ingest records that
never became rows (invalid input): those are only kept for `streams dlq` to list and replay.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import faust
import orjson
from psycopg.types.json import Jsonb

from streams import metrics
from streams.agents.resources import Resources
from streams.db.queries import named
from streams.kafka.outbox import Outbox
from streams.records import WorkRecord, entities_errored

log = logging.getLogger(__name__)
Q = named("dead_letters")
COMMON = named("common")


@dataclass(frozen=True)
class DeadLetterTopics:
    run_events: faust.TopicT


class DeadLetterAgent:
    def __init__(self, topics: DeadLetterTopics, resources: Resources) -> None:
        self.topics = topics
        self.resources = resources

    async def handle(self, events: Sequence[faust.types.EventT]) -> None:
        dead = [(event, work) for event in events if (work := _work_record(event.message.value)) is not None]
        if not dead:
            return
        pool = await self.resources.pool()
        errored: list[int] = []
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(COMMON["prefer_hash_joins"])
            for _, work in dead:
                ids = [uuid.UUID(item.id) for item in work.items]
                await conn.execute(Q["mark_errored"], {
                    "work_id": work.work_id, "ids": ids,
                    "errors": [Jsonb(work.errors[i.id]) if i.id in work.errors else None for i in work.items]})
                # The rows this dead letter holds ERRORED, now or from an earlier delivery, so a
                # redelivery reports the same count (and the tracker, seeing the same event id,
                # counts it once anyway).
                row = await (await conn.execute(Q["errored_by"], {"work_id": work.work_id, "ids": ids})).fetchone()
                errored.append(int(row[0]) if row else 0)
        outbox = Outbox()
        for (event, work), count in zip(dead, errored, strict=True):
            message = event.message
            run_event = entities_errored(work.run_id, work.batch, work_id=work.work_id, errored=count)
            await outbox.send(self.topics.run_events, key=work.run_id.encode(), value=run_event.encode())
            metrics.ENTITIES.labels(outcome="errored").inc(count)
            log.info("dead letters marked errored", extra={
                "run": work.run_id, "batch": work.batch, "entities": count, "work_id": work.work_id,
                "partition": message.partition, "offset": message.offset})
        await outbox.flush()

    async def dead_letter(self, event: faust.types.EventT, error: BaseException, *, excerpt: bool = False) -> None:
        """A dead letter that cannot be recorded has nowhere further to go: log it loudly and
        move on; it stays on the topic for `streams dlq` and replay."""
        message = event.message
        log.error("dead letter could not be recorded", extra={
            "partition": message.partition, "offset": message.offset, "error": type(error).__name__})


def _work_record(value: bytes | None) -> WorkRecord | None:
    try:
        return WorkRecord.decode(value or b"")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # an ingest record that was never valid: no rows to mark
