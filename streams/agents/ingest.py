"""The ingest agent: `ingest` records → QUEUED rows, work records and run events.

Per batch of Kafka records: decode and validate each (invalid ones are dead-lettered with a
reason), hash the entities, then one transaction (streams.db.ingest_store) claims the batch
identities, finds duplicates, COPYs the new rows and counts the duplicates; after the commit
the work records, run events and dead letters go out through the batch's Checkpoint, which
acks the offsets only after the broker has them all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import faust
import orjson

from streams import metrics
from streams.db.ingest_store import Accepted, IngestStore
from streams.errors import InvalidRecord
from streams.kafka import headers
from streams.kafka.checkpoint import Checkpoint
from streams.kafka.config import work_record_budget
from streams.models import IngestBatch, Seal
from streams.pipeline.ingest import HashedBatch, Source, decode, hash_batch
from streams.pipeline.outcomes import ErrorClass
from streams.records import RunEvent, batch_accepted, fit, sealed
from streams.resources import Resources
from streams.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestTopics:
    work: faust.TopicT
    run_events: faust.TopicT
    dlq: faust.TopicT


class IngestAgent:
    def __init__(self, settings: Settings, topics: IngestTopics, resources: Resources) -> None:
        self.settings = settings
        self.topics = topics
        self.store = IngestStore(resources.db)

    async def handle(self, events: Sequence[faust.types.EventT], out: Checkpoint) -> None:
        batches: list[HashedBatch] = []
        for event in events:
            message = event.message
            try:
                record = decode(message.value, self.settings.max_record_bytes)
            except InvalidRecord as exc:
                await self._dead_letter(out, event, ErrorClass.INVALID, exc.reason)
                continue
            if isinstance(record, Seal):
                await self._send_event(out, sealed(record.run_id, record.batches))
                log.info("run sealed", extra={"run": record.run_id, "batches": record.batches})
            else:
                batches.append(hash_batch(record, Source(message.topic, message.partition, message.offset)))
        if not batches:
            return
        accepted = await self.store.accept(batches)
        self._log(accepted)
        budget = work_record_budget(self.settings)
        for work in accepted.plan.work + accepted.resent:
            # A work record is larger than its ingest record (ids, keys): a batch near the
            # limit goes as several, each under it.
            for part in fit(work, budget):
                await out.send(self.topics.work, key=f"{work.run_id}:{work.batch}".encode(), value=part.encode())
        for run_event in _events(accepted):
            await self._send_event(out, run_event)

    async def dead_letter(self, event: faust.types.EventT, error: BaseException, out: Checkpoint, *,
                          excerpt: bool = False) -> None:
        """A record that failed every try: to the DLQ as permanent, with the error (`excerpt`:
        only its first bytes, when the whole one could not be written)."""
        await self._dead_letter(out, event, ErrorClass.PERMANENT, f"{type(error).__name__}: {error}", excerpt=excerpt)

    async def _send_event(self, out: Checkpoint, run_event: RunEvent) -> None:
        await out.send(self.topics.run_events, key=run_event.run_id.encode(), value=run_event.encode())

    async def _dead_letter(self, out: Checkpoint, event: faust.types.EventT, error_class: ErrorClass,
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
        await out.send(self.topics.dlq, key=message.key, value=value, headers=dlq_headers + extra)
        metrics.DEAD_LETTERS.labels(error_class=error_class.value).inc()
        log.warning("record dead-lettered", extra={
            "topic": message.topic, "partition": message.partition, "offset": message.offset,
            "run": run_id, "error_class": error_class.value, "reason": reason[:300]})

    @staticmethod
    def _log(accepted: Accepted) -> None:
        plan = accepted.plan
        metrics.ENTITIES.labels(outcome="queued").inc(len(plan.rows))
        metrics.ENTITIES.labels(outcome="duplicate").inc(sum(plan.duplicate_counts.values()))
        for b in accepted.new:
            new_count, duplicates = plan.batch_counts[b.key]
            log.info("batch accepted", extra={"run": b.batch.run_id, "batch": b.batch.batch, "new": new_count,
                                              "duplicates": duplicates, "partition": b.source.partition,
                                              "offset": b.source.offset})
        for b in accepted.known:
            log.info("batch seen before; not counted again", extra={
                "run": b.batch.run_id, "batch": b.batch.batch, "partition": b.source.partition,
                "offset": b.source.offset})


def _events(accepted: Accepted) -> list[RunEvent]:
    """One batch_accepted per batch: the new ones with what was just stored, the known ones with
    their stored counts again (the tracker counts an event id once)."""
    counts = accepted.plan.batch_counts
    events = [batch_accepted(b.batch.run_id, b.batch.batch, entities=len(b.batch.entities), new=counts[b.key][0],
                             duplicates=counts[b.key][1], producer=_producer(b.batch)) for b in accepted.new]
    known = accepted.known_counts
    events += [batch_accepted(b.batch.run_id, b.batch.batch, entities=known[b.key][0], new=known[b.key][1],
                              duplicates=known[b.key][2], producer=_producer(b.batch))
               for b in accepted.known if b.key in known]
    return events


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
