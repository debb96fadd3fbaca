"""The ingest agent's Postgres work: one transaction per chunk of ingest records.

In order (sql/queries/ingest.sql): claim the batch identities (a batch seen before is not
accepted again), find the rows the new entities duplicate, COPY the new rows, count the
duplicates, store per-batch counts; for batches seen before, read back their counts and the
rows still QUEUED (their work record may not have been sent before a crash). What to insert
is decided by streams.pipeline.ingest.plan_chunk, without I/O.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

from psycopg import AsyncConnection

from streams.db.database import Database
from streams.db.queries import named
from streams.pipeline.ingest import ChunkPlan, HashedBatch, plan_chunk
from streams.records import WorkItem, WorkRecord

Q = named("ingest")
COMMON = named("common")
_COPY_TYPES = ["uuid", "text", "text", "int4", "text", "jsonb", "bytea", "text", "int4", "int8"]

BatchKey = tuple[str, int]


@dataclass
class Accepted:
    """What a chunk came to: batches new to us (with the plan that stored them), batches seen
    before (with their stored counts: entities, new, duplicates) and the work to send again."""

    new: list[HashedBatch] = field(default_factory=list)
    plan: ChunkPlan = field(default_factory=ChunkPlan)
    known: list[HashedBatch] = field(default_factory=list)
    known_counts: dict[BatchKey, tuple[int, int, int]] = field(default_factory=dict)
    resent: list[WorkRecord] = field(default_factory=list)


class IngestStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        # Concurrent chunks of one worker take turns: two chunks in flight must not both insert
        # the same entity as new.
        self._turn = asyncio.Lock()

    async def accept(self, batches: list[HashedBatch]) -> Accepted:
        # The same (run_id, batch) twice in one chunk: the first is the batch, the rest repeats.
        unique: dict[BatchKey, HashedBatch] = {}
        for hashed in batches:
            unique.setdefault(hashed.key, hashed)
        done = Accepted()
        async with self._turn, self.db.transaction() as conn:
            await conn.execute(COMMON["prefer_hash_joins"])
            new_keys = await _claim(conn, list(unique.values()))
            done.new = [b for b in unique.values() if b.key in new_keys]
            done.known = [b for b in unique.values() if b.key not in new_keys]
            done.plan = plan_chunk(done.new, await _existing(conn, done.new))
            await _insert(conn, done.plan, done.new)
            done.resent, done.known_counts = await _known(conn, done.known)
        return done


async def _claim(conn: AsyncConnection, batches: list[HashedBatch]) -> set[BatchKey]:
    cursor = await conn.execute(Q["claim_batches"], {
        "run_ids": [b.batch.run_id for b in batches], "batches": [b.batch.batch for b in batches],
        "request_ids": [b.batch.request_id for b in batches],
        "entity_counts": [len(b.batch.entities) for b in batches],
        "topics": [b.source.topic for b in batches], "partitions": [b.source.partition for b in batches],
        "offsets": [b.source.offset for b in batches]})
    return {(run_id, batch) for run_id, batch in await cursor.fetchall()}


async def _existing(conn: AsyncConnection, batches: list[HashedBatch]) -> dict[bytes, uuid.UUID]:
    hashes = list({digest for b in batches for digest in b.hashes})
    if not hashes:
        return {}
    cursor = await conn.execute(Q["find_duplicates"], {"hashes": hashes})
    return {bytes(digest): row_id for digest, row_id in await cursor.fetchall()}


async def _insert(conn: AsyncConnection, plan: ChunkPlan, new: list[HashedBatch]) -> None:
    if plan.rows:
        async with conn.cursor() as cursor, cursor.copy(Q["copy_new_rows"]) as copy:
            copy.set_types(_COPY_TYPES)
            for row in plan.rows:
                await copy.write_row(row)
    if plan.duplicate_counts:
        ids, counts = zip(*plan.duplicate_counts.items(), strict=True)
        await conn.execute(Q["count_duplicates"], {"ids": list(ids), "counts": list(counts)})
        await conn.execute(Q["log_duplicates"], {"ids": [d[0] for d in plan.duplicates],
                                                 "run_ids": [d[1] for d in plan.duplicates],
                                                 "batches": [d[2] for d in plan.duplicates]})
    if new:
        keys = list(plan.batch_counts)
        await conn.execute(Q["set_batch_counts"], {
            "run_ids": [k[0] for k in keys], "batches": [k[1] for k in keys],
            "new_counts": [plan.batch_counts[k][0] for k in keys],
            "duplicate_counts": [plan.batch_counts[k][1] for k in keys]})


async def _known(conn: AsyncConnection, known: list[HashedBatch]
                 ) -> tuple[list[WorkRecord], dict[BatchKey, tuple[int, int, int]]]:
    """For batches seen before: their QUEUED rows (to send again) and their stored counts."""
    if not known:
        return [], {}
    keys = {"run_ids": [b.batch.run_id for b in known], "batches": [b.batch.batch for b in known]}
    rows = await (await conn.execute(Q["queued_rows_of_batches"], keys)).fetchall()
    grouped: dict[BatchKey, list[WorkItem]] = defaultdict(list)
    for run_id, batch, row_id, object_type, entity in rows:
        grouped[(run_id, batch)].append(WorkItem(str(row_id), object_type, entity))
    work = [resent_work(run_id, batch, tuple(items)) for (run_id, batch), items in grouped.items()]
    counts = await (await conn.execute(Q["batch_counts"], keys)).fetchall()
    return work, {(r, b): (total, new, dup) for r, b, total, new, dup in counts}


def resent_work(run_id: str, batch: int, items: tuple[WorkItem, ...]) -> WorkRecord:
    """The work record of a known batch's rows still QUEUED. Its id is its own (the rows it
    holds decide it): the batch's first work records may be on their way with other rows, and
    sharing their ids would make one of the two uncounted."""
    digest = hashlib.blake2b("\n".join(sorted(i.id for i in items)).encode(), digest_size=6).hexdigest()
    return WorkRecord(run_id, batch, items, id=f"{run_id}/{batch}/1+q{digest}")
