"""The dead-letter agent's Postgres work (sql/queries/dead_letters.sql): the rows of dead
letters become ERRORED, in one transaction per batch of dead letters."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from psycopg.types.json import Jsonb

from streams.db.database import Database
from streams.db.queries import named
from streams.records import WorkRecord

Q = named("dead_letters")
COMMON = named("common")


class DeadLetterStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def mark_errored(self, letters: Sequence[WorkRecord]) -> list[int]:
        """Make each letter's rows ERRORED (whatever state its record left them in); return, per
        letter, how many of its rows it holds ERRORED now, this time or on an earlier delivery,
        so a redelivery reports the same count."""
        counts = []
        async with self.db.transaction() as conn:
            await conn.execute(COMMON["prefer_hash_joins"])
            for work in letters:
                ids = [uuid.UUID(item.id) for item in work.items]
                await conn.execute(Q["mark_errored"], {
                    "work_id": work.work_id, "ids": ids,
                    "errors": [Jsonb(work.errors[i.id]) if i.id in work.errors else None for i in work.items]})
                row = await (await conn.execute(Q["errored_by"], {"work_id": work.work_id, "ids": ids})).fetchone()
                counts.append(int(row[0]) if row else 0)
        return counts
