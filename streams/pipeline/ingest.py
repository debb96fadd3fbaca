"""Pure logic of the ingest agent: decode and validate a record, then plan a chunk of batches.

No I/O here: the agent feeds in records and the rows that already exist, and gets back the rows
to COPY, the duplicate counts, per-batch counts and the work records to produce.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import orjson
from pydantic import ValidationError

from streams.errors import InvalidRecord
from streams.models import IngestBatch, Seal, parse_ingest_record
from streams.pipeline.hashing import entity_hash
from streams.records import WorkItem, WorkRecord


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class HashedBatch:
    batch: IngestBatch
    hashes: tuple[bytes, ...]
    source: Source

    @property
    def key(self) -> tuple[str, int]:
        return self.batch.run_id, self.batch.batch


def decode(value: bytes | None, max_bytes: int) -> IngestBatch | Seal:
    """Parse and validate one `ingest` record; raise InvalidRecord with a reason."""
    if value is None:
        raise InvalidRecord("record has no value")
    if len(value) > max_bytes:
        raise InvalidRecord(f"record is {len(value)} bytes, above the limit of {max_bytes}")
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRecord("not a JSON object")
    try:
        return parse_ingest_record(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "record"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        message = first["msg"].removeprefix("Value error, ")
        raise InvalidRecord(f"fails the schema at {where}: {message}{more}") from None


def hash_batch(batch: IngestBatch, source: Source) -> HashedBatch:
    return HashedBatch(batch, tuple(entity_hash(e.object_type, e.entity) for e in batch.entities), source)


_random = random.Random()  # seeded from os.urandom once, at import


def new_id() -> uuid.UUID:
    """A time-ordered (version 7) UUID: new rows land at the end of the primary key index
    instead of at random pages, which keeps COPY fast as the table grows."""
    millis = time.time_ns() // 1_000_000
    # Ids must be unique, not unguessable: a seeded PRNG is ~10x cheaper than os.urandom.
    rand = _random.getrandbits(80)
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76 | ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62 | (rand & ((1 << 62) - 1))
    return uuid.UUID(int=value)


@dataclass
class ChunkPlan:
    rows: list[tuple[object, ...]] = field(default_factory=list)  # COPY rows of ingestion_logs
    duplicate_counts: Counter[uuid.UUID] = field(default_factory=Counter)  # existing id -> + n
    duplicates: list[tuple[uuid.UUID, str, int]] = field(default_factory=list)  # (existing id, run, batch)
    batch_counts: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)  # -> (new, dup)
    work: list[WorkRecord] = field(default_factory=list)


def plan_chunk(batches: list[HashedBatch], existing: dict[bytes, uuid.UUID]) -> ChunkPlan:
    """Split the entities of new batches into rows to insert and duplicates of known rows.

    `existing` maps hashes to the row they duplicate (not ERRORED). Within the chunk, the first
    occurrence of a hash is new and later ones count as its duplicates, in record order.
    """
    seen = dict(existing)
    plan = ChunkPlan()
    for hashed in batches:
        batch, source = hashed.batch, hashed.source
        items: list[WorkItem] = []
        duplicates = 0
        for entity, digest in zip(batch.entities, hashed.hashes, strict=True):
            known = seen.get(digest)
            if known is not None:
                plan.duplicate_counts[known] += 1
                plan.duplicates.append((known, batch.run_id, batch.batch))
                duplicates += 1
                continue
            row_id = new_id()
            seen[digest] = row_id
            plan.rows.append((row_id, batch.request_id, batch.run_id, batch.batch, entity.object_type,
                              entity.entity, digest, source.topic, source.partition, source.offset))
            items.append(WorkItem(str(row_id), entity.object_type, entity.entity))
        plan.batch_counts[hashed.key] = (len(items), duplicates)
        if items:
            plan.work.append(WorkRecord(batch.run_id, batch.batch, tuple(items)))
    return plan
