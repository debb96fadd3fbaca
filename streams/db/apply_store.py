"""The plan-apply step's Postgres work (sql/queries/apply.sql): per work record, a short claim
transaction before the target is called, and one transaction that writes everything the
target answered: states, retries, dead letters, change sets and changes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from streams.db.database import Database
from streams.db.queries import named
from streams.pipeline.apply import Routing
from streams.records import WorkRecord

Q = named("apply")
COMMON = named("common")


@dataclass(frozen=True)
class RoutedRow:
    """A row the record already dealt with in an earlier delivery (see routed_by_claim)."""

    id: str
    state: int
    claimed_by: str | None
    retry_tier: int | None
    due_at_ms: int | None
    last_error: dict[str, Any] | None


@dataclass(frozen=True)
class Claim:
    claimed: frozenset[str]  # ids now APPLYING under the record's claim
    routed: tuple[RoutedRow, ...]
    token: uuid.UUID  # this delivery's (0008_claim_token.sql)


class ClaimLost(Exception):
    """Another delivery of the same work record took over its rows after this one claimed them:
    that one settles and reports them, this one must leave them alone."""


class ApplyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(self, work: WorkRecord) -> Claim:
        """Take the record's rows: QUEUED ones, ones routed to it, its own APPLYING ones after
        a crash; and read back what an earlier delivery of it already settled or routed."""
        ids = [uuid.UUID(item.id) for item in work.items]
        token = uuid.uuid4()
        async with self.db.transaction() as conn:
            claimed = await (await conn.execute(Q["claim"], {"work_id": work.work_id, "ids": ids, "token": token})
                             ).fetchall()
            routed = await (await conn.execute(Q["routed_by_claim"], {"work_id": work.work_id, "ids": ids})).fetchall()
        return Claim(frozenset(str(row[0]) for row in claimed),
                     tuple(RoutedRow(str(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in routed), token)

    async def settle(self, work: WorkRecord, claim: Claim, routing: Routing, retries: dict[int, list[WorkRecord]],
                     deads: list[WorkRecord], again: dict[int, list[WorkRecord]] | None = None) -> None:
        """One transaction: the final states, the rows each retry record (per tier) and each
        dead letter now holds, and the change sets the target returned. Raises ClaimLost, writing
        nothing, when the claim's rows are no longer all under its token."""
        async with self.db.transaction() as conn:
            ids = [uuid.UUID(i) for i in claim.claimed]
            held = await (await conn.execute(Q["hold_claim"], {
                "work_id": work.work_id, "token": claim.token, "ids": ids})).fetchone()
            if held is None or held[0] != len(claim.claimed):
                raise ClaimLost(work.work_id)
            await conn.execute(COMMON["prefer_hash_joins"])
            if routing.done_ids:
                await conn.execute(Q["record_outcomes"], {
                    "work_id": work.work_id, "ids": [uuid.UUID(i) for i in routing.done_ids],
                    "states": routing.done_states, "errors": [None] * len(routing.done_ids)})
            for groups, records in ((routing.retry, retries), (routing.again, again or {})):
                for tier, parts in records.items():
                    for part in parts:
                        await conn.execute(Q["route_to_retry"], {
                            "work_id": work.work_id, "child_id": part.work_id, "tier": tier,
                            "due_at_ms": groups[tier].due_at_ms, **_rows_of(part)})
            for part in deads:
                await conn.execute(Q["route_to_dlq"], {"work_id": work.work_id, "child_id": part.work_id,
                                                      **_rows_of(part)})
            await _change_sets(conn, work, routing)


async def _change_sets(conn: AsyncConnection, work: WorkRecord, routing: Routing) -> None:
    if routing.change_sets:
        await conn.execute(Q["insert_change_sets"], {
            "ids": [cs for cs, _ in routing.change_sets],
            "log_ids": [uuid.UUID(log_id) for _, log_id in routing.change_sets],
            "attempts": [work.attempt] * len(routing.change_sets),
            "warnings": [_jsonb(list(routing.warnings[cs])) if cs in routing.warnings else None
                         for cs, _ in routing.change_sets]})
    if routing.changes:
        columns = list(zip(*routing.changes, strict=True))
        await conn.execute(Q["insert_changes"], {
            "change_set_ids": list(columns[0]), "seqs": list(columns[1]), "change_types": list(columns[2]),
            "object_types": list(columns[3]), "object_ids": list(columns[4]),
            "befores": [_jsonb(v) for v in columns[5]], "datas": [_jsonb(v) for v in columns[6]]})


def _rows_of(part: WorkRecord) -> dict[str, Any]:
    """The ids and errors of a retry record or dead letter, as route_to_retry/route_to_dlq take them."""
    return {"ids": [uuid.UUID(item.id) for item in part.items],
            "errors": [Jsonb(part.errors.get(item.id)) for item in part.items]}


def _jsonb(value: object) -> Jsonb | None:
    return None if value is None else Jsonb(value)
