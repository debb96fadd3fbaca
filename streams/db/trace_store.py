"""Postgres side of `streams trace`: the life of one entity (its row, its history, its change
sets, the replays that carried it), and the entities of a run, batch, request or hash. Sync (a
CLI read); SQL in sql/queries/trace.sql, every lookup on an index."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from streams.db.queries import named
from streams.pipeline.outcomes import State

Q = named("trace")


@dataclass(frozen=True)
class Step:
    at: datetime
    step: str
    state: str | None
    attempt: int | None
    tier: int | None  # the retry tier, counted from 1 as `streams status` does (None: not a tier)
    work_id: str | None
    error: dict[str, Any] | None
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class Change:
    change_type: str
    object_type: str
    object_id: int | None


@dataclass
class ChangeSet:
    id: str
    attempt: int
    created_at: datetime
    warnings: Any
    changes: list[Change] = field(default_factory=list)


@dataclass(frozen=True)
class EntityTrace:
    row: dict[str, Any]  # the ingestion_logs row (no entity body)
    steps: list[Step]
    change_sets: list[ChangeSet]
    replays: list[dict[str, Any]]


@dataclass(frozen=True)
class BatchesTrace:
    run_id: str
    batch: int | None
    batches: list[dict[str, Any]]
    states: dict[str, int]
    entities: list[dict[str, Any]]  # the first `limit`, trouble first


def _state(value: int | None) -> str | None:
    return None if value is None else State(value).name


class TraceReader:
    def __init__(self, conninfo: str) -> None:
        self._conn = psycopg.connect(conninfo, connect_timeout=10, autocommit=True,
                                     options="-c statement_timeout=30000")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def entity(self, entity_id: uuid.UUID) -> EntityTrace | None:
        with self._conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(Q["entity"], {"id": entity_id}).fetchone()
        if row is None:
            return None
        row["entity_hash"] = row.pop("encode")
        row["state"] = _state(row["state"])
        row["requeued_from_state"] = _state(row["requeued_from_state"])
        steps = [Step(at, step, _state(state), attempt, None if tier is None else tier + 1, work_id, error, detail)
                 for at, step, state, attempt, tier, work_id, error, detail
                 in self._conn.execute(Q["events"], {"id": entity_id}).fetchall()]
        sets: dict[str, ChangeSet] = {}
        for set_id, attempt, created_at, warnings, seq, change_type, object_type, object_id in self._conn.execute(
                Q["change_sets"], {"id": entity_id}).fetchall():
            found = sets.setdefault(set_id, ChangeSet(set_id, attempt, created_at, warnings))
            if seq is not None:
                found.changes.append(Change(change_type, object_type, object_id))
        with self._conn.cursor(row_factory=dict_row) as cur:
            replays = cur.execute(Q["replays"], {"id": entity_id}).fetchall()
        return EntityTrace(row, steps, list(sets.values()), replays)

    def ids_by_hash(self, digest: str, limit: int) -> list[uuid.UUID]:
        return [row[0] for row in self._conn.execute(Q["ids_by_hash"], {"hash": digest, "limit": limit}).fetchall()]

    def batches_of_request(self, request_id: str) -> list[tuple[str, int]]:
        return [(r[0], r[1]) for r in self._conn.execute(Q["batch_of_request"], {"request_id": request_id}).fetchall()]

    def batches(self, run_id: str, batch: int | None, limit: int) -> BatchesTrace:
        params = {"run_id": run_id, "batch": batch, "limit": limit}
        with self._conn.cursor(row_factory=dict_row) as cur:
            batches = cur.execute(Q["batches"], params).fetchall()
        states = {State(state).name: count for state, count in self._conn.execute(Q["states_of_batches"], params)}
        entities = [{"id": str(i), "batch": b, "object_type": t, "state": State(s).name, "attempts": a,
                     "error_class": c, "updated_at": u}
                    for i, b, t, s, a, c, u in self._conn.execute(Q["entities_of_batches"], params).fetchall()]
        return BatchesTrace(run_id, batch, batches, states, entities)
