"""Postgres side of `streams status`: rows by state, the stuck ones, dead-lettered entities and
open runs. Sync (a CLI read), one short transaction; SQL in sql/queries/status.sql."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from streams.db.queries import named
from streams.pipeline.outcomes import State

Q = named("status")
SWEEP = named("sweep")


@dataclass(frozen=True)
class Count:
    key: str
    count: int
    oldest: datetime | None


@dataclass(frozen=True)
class OpenRun:
    run_id: str
    first_seen_at: datetime
    sealed_at: datetime | None
    batches_total: int | None
    batches_accepted: int
    batches_completed: int
    batches_failed: int
    entities_accepted: int
    updated_at: datetime


@dataclass(frozen=True)
class DatabaseState:
    rows: list[Count]  # by state name
    stuck: dict[str, int]  # by state name, past `stuck_after`
    stuck_after: float
    errored_by_class: list[Count]
    errored_by_run: list[Count]
    open_runs: list[OpenRun]
    open_run_count: int


def read_state(conninfo: str, *, stuck_after: float, limit: int = 10) -> DatabaseState:
    with psycopg.connect(conninfo, connect_timeout=10, options="-c statement_timeout=30000") as conn:
        rows = [Count(State(state).name, count, oldest)
                for state, count, oldest in conn.execute(Q["rows_by_state"]).fetchall()]
        stuck = {State(state).name: count
                 for state, count in conn.execute(SWEEP["stuck_counts"], {"after": stuck_after}).fetchall()}
        by_class = [Count(*row) for row in conn.execute(Q["errored_by_class"]).fetchall()]
        by_run = [Count(*row) for row in conn.execute(Q["errored_by_run"], {"limit": limit}).fetchall()]
        open_runs = [OpenRun(*row) for row in conn.execute(Q["open_runs"], {"limit": limit}).fetchall()]
        count_row = conn.execute(Q["open_run_count"]).fetchone()
    return DatabaseState(sorted(rows, key=lambda c: c.key), stuck, stuck_after, by_class, by_run, open_runs,
                         int(count_row[0]) if count_row else 0)
