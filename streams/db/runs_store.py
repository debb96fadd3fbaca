"""Postgres side of run progress: the run tracker's mirror writes and completion records
(async, RunsStore) and the reads of `streams runs` (sync). SQL is in sql/queries/runs.sql."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from streams.db.database import Database
from streams.db.queries import named
from streams.models import RunCompleted
from streams.runs.progress import RunProgress

Q = named("runs")


# --- writes (the tracker) --------------------------------------------------------------------


class RunsStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @asynccontextmanager
    async def completing(self, run_id: str) -> AsyncIterator[Completing]:
        """One transaction holding the run's completion lock: until it ends, no other worker is
        in the completion step of this run."""
        async with self.db.transaction() as conn:
            await conn.execute(Q["lock_run"], {"run_id": run_id})
            yield Completing(conn)

    async def mirror(self, runs: Sequence[RunProgress]) -> None:
        async with self.db.transaction() as conn:
            await _mirror(conn, runs)


class Completing:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def record(self, completed: RunCompleted, runs: Sequence[RunProgress]) -> None:
        """The completion sent (or found on the topic), and the runs' snapshots."""
        await self._conn.execute(Q["record_completion"], {
            "run_id": completed.run_id, "revision": completed.revision, "status": completed.status,
            "record": Jsonb(completed.model_dump(mode="json")), "completed_at": completed.completed_at})
        await _mirror(self._conn, runs)


async def _mirror(conn: AsyncConnection, runs: Sequence[RunProgress]) -> None:
    """Upsert the snapshots of `runs` into ingest_runs in one statement."""
    if not runs:
        return
    t = [run.totals for run in runs]
    await conn.execute(Q["mirror_runs"], {
        "run_ids": [run.run_id for run in runs], "revisions": [run.revision for run in runs],
        "batches_total": [run.batches_total for run in runs],
        "batches_accepted": [x.batches_accepted for x in t],
        "batches_completed": [x.batches_completed for x in t],
        "batches_failed": [x.batches_failed for x in t],
        "entities_accepted": [x.entities_accepted for x in t],
        "entities_applied": [x.applied for x in t], "entities_no_changes": [x.no_changes for x in t],
        "entities_duplicates": [x.duplicates for x in t], "entities_in_retry": [x.in_retry for x in t],
        "entities_errored": [x.errored for x in t],
        "producers": [Jsonb(run.producer) if run.producer else None for run in runs],
        "first_seen_at": [_time(run.first_seen or run.updated) or datetime.now(UTC) for run in runs],
        "sealed_at": [_time(run.sealed_at) for run in runs],
        "completed_at": [_time(run.completed_at) for run in runs],
        "updated_at": [_time(run.updated) or datetime.now(UTC) for run in runs],
        "events": [run.events for run in runs],
    })


def _time(epoch_ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC) if epoch_ms else None


# --- reads (`streams runs`) ------------------------------------------------------------------


@dataclass(frozen=True)
class RunRow:
    run_id: str
    revision: int
    batches_total: int | None
    batches_accepted: int
    batches_completed: int
    batches_failed: int
    entities_accepted: int
    entities_applied: int
    entities_no_changes: int
    entities_duplicates: int
    entities_in_retry: int
    entities_errored: int
    first_seen_at: datetime
    sealed_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    producer: dict[str, Any] | None

    @property
    def settled(self) -> int:
        return self.batches_completed + self.batches_failed

    @property
    def complete(self) -> bool:
        return self.batches_total is not None and self.settled == self.batches_total


@dataclass(frozen=True)
class FailedBatch:
    batch: int
    errored: int
    failing: int  # FAILED rows the dead-letter agent has not marked ERRORED yet
    error_class: str | None
    reason: str | None


@dataclass(frozen=True)
class Revision:
    revision: int
    status: str
    record: dict[str, Any]
    completed_at: datetime


def list_runs(conninfo: str, *, limit: int) -> list[RunRow]:
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        return [RunRow(*row) for row in conn.execute(Q["list_runs"], {"limit": limit}).fetchall()]


def run_detail(conninfo: str, run_id: str, *, batch_limit: int = 50
               ) -> tuple[RunRow, list[FailedBatch], list[Revision]] | None:
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        row = conn.execute(Q["get_run"], {"run_id": run_id}).fetchone()
        if row is None:
            return None
        failed = [FailedBatch(*r) for r in conn.execute(
            Q["failed_batches"], {"run_id": run_id, "limit": batch_limit}).fetchall()]
        revisions = [Revision(*r) for r in conn.execute(Q["run_revisions"], {"run_id": run_id}).fetchall()]
    return RunRow(*row), failed, revisions
