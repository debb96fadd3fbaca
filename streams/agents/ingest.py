"""The ingest agent: `ingest` records → QUEUED rows, work records and run events.

Per batch of Kafka records: decode and validate each (invalid ones are dead-lettered with a
reason), hash the entities, then one transaction claims the batch identities, finds
duplicates, COPYs the new rows and counts the duplicates; after the commit the work records,
run events and dead letters are produced and flushed together. The offsets are acked by
GuardedBatches only after that flush.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import faust
import orjson
from psycopg import AsyncConnection

from streams import metrics
from streams.agents.resources import Resources
from streams.db.queries import named
from streams.errors import InvalidRecord
from streams.kafka import headers
from streams.kafka.config import work_record_budget
from streams.kafka.outbox import Outbox
from streams.models import IngestBatch, Seal
from streams.pipeline.ingest import HashedBatch, Source, decode, hash_batch, plan_chunk
from streams.pipeline.outcomes import ErrorClass
from streams.records import RunEvent, WorkItem, WorkRecord, batch_accepted, fit, sealed
from streams.settings import Settings

log = logging.getLogger(__name__)
Q = named("ingest")
COMMON = named("common")
_COPY_TYPES = ["uuid", "text", "text", "int4", "text", "jsonb", "bytea", "text", "int4", "int8"]


@dataclass(frozen=True)
class IngestTopics:
    work: faust.TopicT
    run_events: faust.TopicT
    dlq: faust.TopicT


class IngestAgent:
    def __init__(self, settings: Settings, topics: IngestTopics, resources: Resources) -> None:
        self.settings = settings
        self.topics = topics
        self.resources = resources
        # Several actors decode and hash concurrently, but their dedup lookup and COPY take
        # turns: two chunks in flight must not both insert the same entity as new.
        self._store_lock = asyncio.Lock()

    async def handle(self, events: Sequence[faust.types.EventT]) -> None:
        outbox = Outbox()
        batches: list[HashedBatch] = []
        for event in events:
            message = event.message
            try:
                record = decode(message.value, self.settings.max_record_bytes)
            except InvalidRecord as exc:
                await self._dead_letter(outbox, event, ErrorClass.INVALID, exc.reason)
                continue
            if isinstance(record, Seal):
                await self._send_event(outbox, sealed(record.run_id, record.batches))
                log.info("run sealed", extra={"run": record.run_id, "batches": record.batches})
            else:
                batches.append(hash_batch(record, Source(message.topic, message.partition, message.offset)))
        if batches:
            work, accepted = await self._store(batches)
            budget = work_record_budget(self.settings)
            for record in work:
                # A work record is larger than its ingest record (ids, keys): a batch near the
                # limit goes as several, each under it.
                for part in fit(record, budget):
                    await outbox.send(self.topics.work, key=f"{record.run_id}:{record.batch}".encode(),
                                      value=part.encode())
            for run_event in accepted:
                await self._send_event(outbox, run_event)
        await outbox.flush()

    async def dead_letter(self, event: faust.types.EventT, error: BaseException, *, excerpt: bool = False) -> None:
        """A record that failed every try: to the DLQ as permanent, with the error (`excerpt`:
        only its first bytes, when the whole one could not be written)."""
        outbox = Outbox()
        await self._dead_letter(outbox, event, ErrorClass.PERMANENT, f"{type(error).__name__}: {error}",
                                excerpt=excerpt)
        await outbox.flush()

    async def _send_event(self, outbox: Outbox, run_event: RunEvent) -> None:
        await outbox.send(self.topics.run_events, key=run_event.run_id.encode(), value=run_event.encode())

    async def _dead_letter(self, outbox: Outbox, event: faust.types.EventT, error_class: ErrorClass,
                           reason: str, *, excerpt: bool = False) -> None:
        message = event.message
        incoming = headers.decode(message.headers)
        run_id = _run_id_of(message.value)
        # A record over the limit is kept as an excerpt: the whole one would not fit the topic.
        value, extra = headers.bounded(message.value, 0 if excerpt else self.settings.max_record_bytes)
        dlq_headers = headers.failure_headers(
            incoming, origin=headers.Origin(message.topic, message.partition, message.offset),
            attempt=int(incoming.get(headers.ATTEMPT, "0")) + 1, error_class=error_class, error=reason,
            now_ms=int(time.time() * 1000), run_id=run_id,
        )
        await outbox.send(self.topics.dlq, key=message.key, value=value, headers=dlq_headers + extra)
        metrics.DEAD_LETTERS.labels(error_class=error_class.value).inc()
        log.warning("record dead-lettered", extra={
            "topic": message.topic, "partition": message.partition, "offset": message.offset,
            "run": run_id, "error_class": error_class.value, "reason": reason[:300]})

    async def _store(self, batches: list[HashedBatch]) -> tuple[list[WorkRecord], list[RunEvent]]:
        # The same (run_id, batch) twice in one chunk: the first is the batch, the rest repeats.
        unique: dict[tuple[str, int], HashedBatch] = {}
        for hashed in batches:
            unique.setdefault(hashed.key, hashed)
        pool = await self.resources.pool()
        async with self._store_lock, pool.connection() as conn, conn.transaction():
            await conn.execute(COMMON["prefer_hash_joins"])
            new_keys = await self._claim(conn, list(unique.values()))
            new = [b for b in unique.values() if b.key in new_keys]
            known = [b for b in unique.values() if b.key not in new_keys]
            plan = plan_chunk(new, await self._existing(conn, new))
            if plan.rows:
                async with conn.cursor() as cursor, cursor.copy(Q["copy_new_rows"]) as copy:
                    copy.set_types(_COPY_TYPES)
                    for row in plan.rows:
                        await copy.write_row(row)
            if plan.duplicate_counts:
                ids, counts = zip(*plan.duplicate_counts.items(), strict=True)
                await conn.execute(Q["count_duplicates"], {"ids": list(ids), "counts": list(counts)})
            if new:
                keys = list(plan.batch_counts)
                await conn.execute(Q["set_batch_counts"], {
                    "run_ids": [k[0] for k in keys], "batches": [k[1] for k in keys],
                    "new_counts": [plan.batch_counts[k][0] for k in keys],
                    "duplicate_counts": [plan.batch_counts[k][1] for k in keys]})
            resent, known_counts = await self._known(conn, known)
        accepted = [
            batch_accepted(b.batch.run_id, b.batch.batch, entities=len(b.batch.entities),
                           new=plan.batch_counts[b.key][0], duplicates=plan.batch_counts[b.key][1],
                           producer=_producer(b.batch))
            for b in new
        ]
        accepted += [
            batch_accepted(b.batch.run_id, b.batch.batch, entities=known_counts[b.key][0],
                           new=known_counts[b.key][1], duplicates=known_counts[b.key][2], producer=_producer(b.batch))
            for b in known if b.key in known_counts
        ]
        metrics.ENTITIES.labels(outcome="queued").inc(len(plan.rows))
        metrics.ENTITIES.labels(outcome="duplicate").inc(sum(plan.duplicate_counts.values()))
        for b in new:
            new_count, duplicates = plan.batch_counts[b.key]
            log.info("batch accepted", extra={"run": b.batch.run_id, "batch": b.batch.batch, "new": new_count,
                                              "duplicates": duplicates, "partition": b.source.partition,
                                              "offset": b.source.offset})
        for b in known:
            log.info("batch seen before; not counted again", extra={
                "run": b.batch.run_id, "batch": b.batch.batch, "partition": b.source.partition,
                "offset": b.source.offset})
        return plan.work + resent, accepted

    async def _claim(self, conn: AsyncConnection, batches: list[HashedBatch]) -> set[tuple[str, int]]:
        cursor = await conn.execute(Q["claim_batches"], {
            "run_ids": [b.batch.run_id for b in batches], "batches": [b.batch.batch for b in batches],
            "request_ids": [b.batch.request_id for b in batches],
            "entity_counts": [len(b.batch.entities) for b in batches],
            "topics": [b.source.topic for b in batches], "partitions": [b.source.partition for b in batches],
            "offsets": [b.source.offset for b in batches]})
        return {(run_id, batch) for run_id, batch in await cursor.fetchall()}

    async def _existing(self, conn: AsyncConnection, batches: list[HashedBatch]) -> dict[bytes, uuid.UUID]:
        hashes = list({digest for b in batches for digest in b.hashes})
        if not hashes:
            return {}
        cursor = await conn.execute(Q["find_duplicates"], {"hashes": hashes})
        return {bytes(digest): row_id for digest, row_id in await cursor.fetchall()}

    async def _known(self, conn: AsyncConnection, known: list[HashedBatch]
                     ) -> tuple[list[WorkRecord], dict[tuple[str, int], tuple[int, int, int]]]:
        """For batches seen before: their QUEUED rows (to send again) and their stored counts."""
        if not known:
            return [], {}
        keys = {"run_ids": [b.batch.run_id for b in known], "batches": [b.batch.batch for b in known]}
        rows = await (await conn.execute(Q["queued_rows_of_batches"], keys)).fetchall()
        grouped: dict[tuple[str, int], list[WorkItem]] = defaultdict(list)
        for run_id, batch, row_id, object_type, entity in rows:
            grouped[(run_id, batch)].append(WorkItem(str(row_id), object_type, entity))
        work = [WorkRecord(run_id, batch, tuple(items)) for (run_id, batch), items in grouped.items()]
        counts = await (await conn.execute(Q["batch_counts"], keys)).fetchall()
        return work, {(r, b): (total, new, dup) for r, b, total, new, dup in counts}


def _producer(batch: IngestBatch) -> dict[str, str] | None:
    return batch.producer.model_dump(exclude_none=True) if batch.producer else None


def _run_id_of(value: bytes | None) -> str | None:
    """The run id of a record that may be invalid, for the x-run-id header (best effort)."""
    if not value:
        return None
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    run_id = data.get("run_id") if isinstance(data, dict) else None
    return run_id if isinstance(run_id, str) and 0 < len(run_id) <= 200 else None
