"""The dead-letter agent: rows of dead-lettered work records become ERRORED.

Records on `ingest.dlq` are either work records (from plan-apply or the last retry tier: their
rows are FAILED and now become ERRORED, and the run tracker is told) or ingest records that
never became rows (invalid input): those are only kept for `streams dlq` to list and replay.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import faust
import orjson

from streams import metrics
from streams.db.dead_letter_store import DeadLetterStore
from streams.kafka.checkpoint import Checkpoint
from streams.records import WorkRecord, entities_errored
from streams.resources import Resources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetterTopics:
    run_events: faust.TopicT


class DeadLetterAgent:
    def __init__(self, topics: DeadLetterTopics, resources: Resources) -> None:
        self.topics = topics
        self.store = DeadLetterStore(resources.db)

    async def handle(self, events: Sequence[faust.types.EventT], out: Checkpoint) -> None:
        dead = [(event, work) for event in events if (work := _work_record(event.message.value)) is not None]
        if not dead:
            return
        errored = await self.store.mark_errored([work for _, work in dead])
        for (event, work), count in zip(dead, errored, strict=True):
            message = event.message
            run_event = entities_errored(work.run_id, work.batch, work_id=work.work_id, errored=count)
            await out.send(self.topics.run_events, key=work.run_id.encode(), value=run_event.encode())
            metrics.ENTITIES.labels(outcome="errored").inc(count)
            log.info("dead letters marked errored", extra={
                "run": work.run_id, "batch": work.batch, "entities": count, "work_id": work.work_id,
                "partition": message.partition, "offset": message.offset})

    async def dead_letter(self, event: faust.types.EventT, error: BaseException, out: Checkpoint, *,
                          excerpt: bool = False) -> None:
        """A dead letter that cannot be recorded has nowhere further to go: log it loudly and
        move on; it stays on the topic for `streams dlq` and replay (and its rows for the sweep)."""
        message = event.message
        log.error("dead letter could not be recorded", extra={
            "partition": message.partition, "offset": message.offset, "error": type(error).__name__})


def _work_record(value: bytes | None) -> WorkRecord | None:
    try:
        return WorkRecord.decode(value or b"")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None  # an ingest record that was never valid: no rows to mark
