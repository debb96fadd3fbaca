"""The sweep's Postgres work (sql/queries/sweep.sql): counting stuck rows, and taking over a
batch of them in one transaction (locked while the sweep decides their new claims)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from streams.db.database import Database
from streams.db.queries import named
from streams.pipeline.outcomes import State

Q = named("sweep")


@dataclass(frozen=True)
class StuckRow:
    id: str
    run_id: str
    batch: int
    object_type: str
    entity: dict[str, Any]
    claimed_by: str | None
    attempts: int
    retry_tier: int | None
    last_error: dict[str, Any] | None


class Takeover:
    def __init__(self, conn: AsyncConnection, rows: list[StuckRow]) -> None:
        self._conn = conn
        self.rows = rows

    async def claim(self, claims: Sequence[tuple[str, str]]) -> None:
        """Give each (row id, record id) its record's claim (QUEUED rows keep none)."""
        if claims:
            await self._conn.execute(Q["take_over"], {"ids": [uuid.UUID(i) for i, _ in claims],
                                                      "claims": [claim for _, claim in claims]})


class SweepStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def stuck(self, after: float) -> dict[State, int]:
        async with self.db.connection() as conn:
            rows = await (await conn.execute(Q["stuck_counts"], {"after": after})).fetchall()
        return {State(state): count for state, count in rows}

    @asynccontextmanager
    async def takeover(self, state: State, *, after: float, limit: int) -> AsyncIterator[Takeover]:
        """Up to `limit` stuck rows of `state`, locked until the block ends (and its claims are
        committed with it)."""
        async with self.db.transaction() as conn:
            found = await (await conn.execute(Q["take_stuck"], {"state": int(state), "after": after,
                                                                "limit": limit})).fetchall()
            yield Takeover(conn, [StuckRow(str(r[0]), *r[1:]) for r in found])
