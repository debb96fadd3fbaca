"""Read-only reports over ingestion_logs and ingest_batches, for the CLI."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from streams.db.queries import named

Q = named("reports")


@dataclass(frozen=True)
class RunStates:
    run_id: str
    batches: int
    entities: int  # sent by producers, over the batches accepted so far
    duplicates: int
    queued: int
    applying: int
    applied: int
    no_changes: int
    pending_retry: int
    failed: int
    errored: int

    @property
    def settled(self) -> int:
        """Entities with a final outcome, duplicates included (they are never sent)."""
        return self.applied + self.no_changes + self.errored + self.duplicates

    @property
    def in_flight(self) -> int:
        """Not final yet: queued, being applied, waiting in a retry tier, or FAILED on the way to
        the dead-letter agent (which makes them ERRORED)."""
        return self.queued + self.applying + self.pending_retry + self.failed


def run_states(conninfo: str, run_ids: list[str] | None = None) -> list[RunStates]:
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        rows = conn.execute(Q["run_states"], {"run_ids": run_ids}).fetchall()
    return [RunStates(row[0], *(int(v) for v in row[1:])) for row in rows]
