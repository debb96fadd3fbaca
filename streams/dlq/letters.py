"""A record read from the dead-letter topic, with what the tooling filters and counts on.

Two shapes reach the DLQ (schemas/headers.md): a work record (`WorkRecord` JSON) from
plan-apply or the last retry tier, whose items are ingestion_logs rows; or the original bytes of
an `ingest` record the ingest agent could not use, which may not be JSON at all and has no rows.
Everything here is derived from the message alone, so it is pure and cheap to test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from streams.kafka import headers as h
from streams.records import WorkRecord


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    timestamp: int  # epoch ms of the DLQ record (when it was dead-lettered)
    key: bytes | None
    headers: Mapping[str, str]
    value: bytes
    work: WorkRecord | None  # None: not a work record (an original ingest record, or unreadable)
    error_class: str | None
    run_id: str | None
    object_types: tuple[str, ...]
    http_status: int | None
    replay_id: str | None  # the replay that sent it back before, if it failed again since
    entity_count: int  # items of a work record; entities of an ingest batch that was readable

    def entities_by_type(self) -> Counter[str]:
        """Entities per object type (an unreadable ingest record has none)."""
        if self.work is not None:
            return Counter(item.object_type for item in self.work.items)
        batch = _json_object(self.value)
        entities = batch.get("entities") if batch else None
        if not isinstance(entities, list):
            return Counter()
        return Counter(e["object_type"] for e in entities
                       if isinstance(e, dict) and isinstance(e.get("object_type"), str))

    @property
    def origin_topic(self) -> str | None:
        return self.headers.get(h.ORIGIN_TOPIC)

    @property
    def error(self) -> str:
        return self.headers.get(h.ERROR, "")

    @property
    def attempt(self) -> int | None:
        return _int(self.headers.get(h.ATTEMPT))

    @property
    def excerpt_of(self) -> int | None:
        """The length of the record this dead letter holds only the first bytes of, if so."""
        return _int(self.headers.get(h.EXCERPT_OF))

    @property
    def batch(self) -> int | None:
        return self.work.batch if self.work is not None else None


def dead_letter(topic: str, partition: int, offset: int, timestamp: int, key: bytes | None,
                headers: Iterable[tuple[str, bytes]] | None, value: bytes | None) -> DeadLetter:
    """Build a DeadLetter from the parts of a Kafka message."""
    text = h.decode(headers)
    value = value or b""
    work = _work_record(value)
    run_id: str | None
    if work is not None:
        object_types = tuple(sorted({item.object_type for item in work.items}))
        run_id = text.get(h.RUN_ID) or work.run_id
        replay_id = text.get(h.REPLAY_ID) or work.replay_id
        count = len(work.items)
    else:
        batch = _json_object(value)
        object_types = _raw_object_types(batch)
        raw_run = batch.get("run_id") if batch else None
        run_id = text.get(h.RUN_ID) or (raw_run if isinstance(raw_run, str) else None)
        replay_id = text.get(h.REPLAY_ID)
        entities = batch.get("entities") if batch else None
        count = len(entities) if isinstance(entities, list) else 0
    return DeadLetter(topic, partition, offset, timestamp, key, text, value, work, text.get(h.ERROR_CLASS),
                      run_id, object_types, _int(text.get(h.HTTP_STATUS)), replay_id, count)


def _work_record(value: bytes) -> WorkRecord | None:
    try:
        return WorkRecord.decode(value)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def _json_object(value: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _raw_object_types(batch: dict[str, Any] | None) -> tuple[str, ...]:
    """Object types of an ingest batch that was readable JSON; best effort, never raises."""
    entities = batch.get("entities") if batch else None
    if not isinstance(entities, list):
        return ()
    found = {e.get("object_type") for e in entities if isinstance(e, dict)}
    return tuple(sorted(t for t in found if isinstance(t, str)))


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None
